"""The LongBench v1 task registry as data: prompt templates, generation lengths, metrics, categories, suites.

Templates are LongBench's `dataset2prompt` strings, verbatim (typos such as "asconcisely" included):
scores are only comparable with the exact same prompt.
"""

from __future__ import annotations

from tasks.task_spec import TaskSpec

_MULTIDOC_QA = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
    "\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
    "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)
PROMPT_TEMPLATES: dict[str, str] = {
    "narrativeqa": (
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
        "{context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if "
        "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"
    ),
    "qasper": (
        "You are given a scientific article and a question. Answer the question as concisely as you can, using a "
        "single phrase or sentence if possible. If the question cannot be answered based on the information in the "
        'article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". '
        "Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article "
        "as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered "
        'based on the information in the article, write "unanswerable". If the question is a yes/no question, answer '
        '"yes", "no", or "unanswerable". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:'
    ),
    "multifieldqa_en": (
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on "
        "the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
    ),
    "multifieldqa_zh": (
        "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。"
        "\n\n问题：{input}\n回答："
    ),
    "hotpotqa": _MULTIDOC_QA,
    "2wikimqa": _MULTIDOC_QA,
    "musique": _MULTIDOC_QA,
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": (
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
        "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:"
    ),
    "qmsum": (
        "You are given a meeting transcript and a query containing a question or instruction. Answer the query in "
        "one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
        "transcript in one or more sentences.\n\nQuery: {input}\nAnswer:"
    ),
    "multi_news": (
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\n"
        "Now, write a one-page summary of all the news.\n\nSummary:"
    ),
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": (
        "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}"
    ),
    "triviaqa": (
        "Answer the question based on the given passage. Only give me the answer and do not output any other words. "
        "The following are some examples.\n\n{context}\n\n{input}"
    ),
    "samsum": (
        "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}"
    ),
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": (
        "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully "
        "read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
        "other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final "
        "count of unique paragraphs after removing duplicates. The output format should only contain the number, "
        "such as 1, 2, 3, and so on.\n\nThe final answer is: "
    ),
    "passage_retrieval_en": (
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
        "abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of "
        'the paragraph that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", '
        "etc.\n\nThe answer is: "
    ),
    "passage_retrieval_zh": (
        "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n"
        '请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式\n\n答案是：'
    ),
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

SINGLE_DOC, MULTI_DOC, SUMMARIZATION = "Single-Doc QA", "Multi-Doc QA", "Summarization"
FEW_SHOT, SYNTHETIC, CODE = "Few-shot Learning", "Synthetic", "Code"
CATEGORIES: tuple[str, ...] = (SINGLE_DOC, MULTI_DOC, SUMMARIZATION, FEW_SHOT, SYNTHETIC, CODE)

# name: (category, language, metric, max_new_tokens); LongBench's dataset2maxlen and eval.py's metric map
_TABLE: dict[str, tuple[str, str, str, int]] = {
    "narrativeqa": (SINGLE_DOC, "en", "qa_f1_score", 128),
    "qasper": (SINGLE_DOC, "en", "qa_f1_score", 128),
    "multifieldqa_en": (SINGLE_DOC, "en", "qa_f1_score", 64),
    "multifieldqa_zh": (SINGLE_DOC, "zh", "qa_f1_zh_score", 64),
    "hotpotqa": (MULTI_DOC, "en", "qa_f1_score", 32),
    "2wikimqa": (MULTI_DOC, "en", "qa_f1_score", 32),
    "musique": (MULTI_DOC, "en", "qa_f1_score", 32),
    "dureader": (MULTI_DOC, "zh", "rouge_zh_score", 128),
    "gov_report": (SUMMARIZATION, "en", "rouge_score", 512),
    "qmsum": (SUMMARIZATION, "en", "rouge_score", 512),
    "multi_news": (SUMMARIZATION, "en", "rouge_score", 512),
    "vcsum": (SUMMARIZATION, "zh", "rouge_zh_score", 512),
    "trec": (FEW_SHOT, "en", "classification_score", 64),
    "triviaqa": (FEW_SHOT, "en", "qa_f1_score", 32),
    "samsum": (FEW_SHOT, "en", "rouge_score", 128),
    "lsht": (FEW_SHOT, "zh", "classification_score", 64),
    "passage_count": (SYNTHETIC, "en", "count_score", 32),
    "passage_retrieval_en": (SYNTHETIC, "en", "retrieval_score", 32),
    "passage_retrieval_zh": (SYNTHETIC, "zh", "retrieval_zh_score", 32),
    "lcc": (CODE, "code", "code_sim_score", 64),
    "repobench-p": (CODE, "code", "code_sim_score", 64),
}

# Official pred.py: chat models are better off without the chat wrapper on few-shot continuation and code.
NO_CHAT_TEMPLATE: frozenset[str] = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
# Official eval.py: these predictions are cut to their first line before scoring.
FIRST_LINE_CUT: frozenset[str] = frozenset({"trec", "triviaqa", "samsum", "lsht"})
# Official pred.py: samsum also stops generating at the first newline token.
STOP_ON_NEWLINE: frozenset[str] = frozenset({"samsum"})
# LongBench-E: length-balanced re-samples, loaded from "<task>_e.jsonl"
E_TASKS: tuple[str, ...] = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec",
    "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)  # fmt: skip


def _spec(name: str, base: str) -> TaskSpec:
    category, language, metric, max_new_tokens = _TABLE[base]
    return TaskSpec(
        name=name,
        metric=metric,
        max_new_tokens=max_new_tokens,
        category=category,
        language=language,
        chat_template_allowed=base not in NO_CHAT_TEMPLATE,
        stop_on_newline=base in STOP_ON_NEWLINE,
        first_line_cut=base in FIRST_LINE_CUT,
    )


LONGBENCH_TASKS: dict[str, TaskSpec] = {name: _spec(name, name) for name in _TABLE} | {
    f"{name}_e": _spec(f"{name}_e", name) for name in E_TASKS
}


def base_task(name: str) -> str:
    """The v1 task a (possibly LongBench-E) task name uses the template of."""
    return name[: -len("_e")] if name.endswith("_e") and name[: -len("_e")] in E_TASKS else name


SUITES: dict[str, tuple[str, ...]] = {
    "longbench": tuple(_TABLE),
    "longbench_en": tuple(name for name, row in _TABLE.items() if row[1] != "zh"),
    "longbench_e": tuple(f"{name}_e" for name in E_TASKS),
    # NAMM's incremental training curriculum (evo-memory's lb_3subset_incr)
    "longbench_curriculum_1": ("passage_retrieval_en",),
    "longbench_curriculum_2": ("passage_retrieval_en", "dureader"),
    "longbench_curriculum_3": ("passage_retrieval_en", "dureader", "narrativeqa"),
}
