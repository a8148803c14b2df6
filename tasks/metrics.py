"""LongBench's metric functions (official names, signatures and values) and the synthetic-task matchers.

Every metric is `(prediction, ground_truth, **kwargs) -> float` in [0, 1]. Written from the semantics of
LongBench's `metrics.py`, including its quirks, because reference scores are only comparable when the
metric is bit-identical:
- English normalisation strips ASCII punctuation only and the articles a/an/the;
- `rouge` 1.0.1 (not rouge-score): any exception, including its recursion failure on one long sentence
  pair, scores 0;
- classification removes matched class names from a list while iterating over it, skipping elements;
- code similarity is fuzzywuzzy's `ratio` with one of its two backends, chosen by `code_sim_backend`:
  `difflib` (plain fuzzywuzzy: LongBench's requirements and the NAMM reference scores) or `lcs`
  (fuzzywuzzy with python-Levenshtein, as SnapKV/PyramidKV/AdaKV ran it).
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

# jieba, rouge and rapidfuzz are imported by the metrics that use them: the synthetic tasks (and so the
# training scorer on a bare torch + transformers machine, scripts/device_check.py) need none of them.

CodeSimBackend = Literal["difflib", "lcs"]
CODE_SIM_BACKENDS: tuple[str, ...] = ("difflib", "lcs")

_ASCII_PUNCTUATION = frozenset(string.punctuation)
# LongBench's list of Chinese/full-width punctuation (it has 》 but not 《); data, kept character for character
_CN_PUNCTUATION = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
_ZH_PUNCTUATION = frozenset(string.punctuation + _CN_PUNCTUATION)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower, drop ASCII punctuation, articles -> space, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_zh_answer(text: str) -> str:
    """Lower, drop ASCII and Chinese punctuation, remove all whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _ZH_PUNCTUATION)
    return "".join(text.split())


def f1_score(prediction_tokens: Sequence[str], ground_truth_tokens: Sequence[str]) -> float:
    """Token-multiset F1."""
    same = sum((Counter(prediction_tokens) & Counter(ground_truth_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _jieba_words(text: str) -> list[str]:
    """jieba's precise-mode segmentation, as LongBench calls it."""
    import jieba

    return list(jieba.cut(text, cut_all=False))


def _zh_tokens(text: str) -> list[str]:
    tokens = (normalize_zh_answer(token) for token in _jieba_words(text))
    return [token for token in tokens if token]


def qa_f1_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return f1_score(_zh_tokens(prediction), _zh_tokens(ground_truth))


def rouge_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """ROUGE-L F of `rouge` 1.0.1; 0 when it raises (empty hypothesis, recursion depth on long sentences)."""
    from rouge import Rouge  # outside the try: a missing package must raise, not score 0

    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # noqa: BLE001 - the official code's bare except: every failure scores 0
        return 0.0
    return scores["rouge-l"]["f"]


def rouge_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return rouge_score(" ".join(_jieba_words(prediction)), " ".join(_jieba_words(ground_truth)))


def classification_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """1/k when the gold class is among the k class names found in the prediction, else 0."""
    all_classes = kwargs.get("all_classes")
    if all_classes is None:
        raise ValueError("classification_score needs all_classes=[...] (the record's class list).")
    matched = [name for name in all_classes if name in prediction]
    # Official quirk: removing from the list being iterated skips the element after each removal.
    for name in matched:
        if name in ground_truth and name != ground_truth:
            matched.remove(name)
    return 1.0 / len(matched) if ground_truth in matched else 0.0


def _paragraph_retrieval(prediction: str, ground_truth: str, pattern: str) -> float:
    gold = re.findall(pattern, ground_truth)
    if not gold:
        raise ValueError(f"Gold answer {ground_truth!r} does not match the paragraph pattern {pattern!r}.")
    numbers = _NUMBER.findall(prediction)
    return numbers.count(gold[0]) / len(numbers) if numbers else 0.0


def retrieval_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Share of the numbers in the prediction that equal the gold 'Paragraph N'."""
    return _paragraph_retrieval(prediction, ground_truth, r"Paragraph (\d+)")


def retrieval_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return _paragraph_retrieval(prediction, ground_truth, r"段落(\d+)")


def count_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Share of the numbers in the prediction that equal the gold count."""
    numbers = _NUMBER.findall(prediction)
    return numbers.count(str(ground_truth)) / len(numbers) if numbers else 0.0


def fuzz_ratio(a: str, b: str, backend: CodeSimBackend) -> int:
    """fuzzywuzzy 0.18 `fuzz.ratio`: equal -> 100, one empty -> 0, else round-half-even of the backend's ratio."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    if backend == "lcs":  # python-Levenshtein's ratio = 2*LCS/(len a + len b) = rapidfuzz's Indel ratio
        from rapidfuzz import fuzz

        return round(fuzz.ratio(a, b))
    if backend == "difflib":  # fuzzywuzzy's fallback without Levenshtein (asymmetric, autojunk on)
        return round(100 * difflib.SequenceMatcher(None, a, b).ratio())
    raise ValueError(f"code_sim_backend must be one of {CODE_SIM_BACKENDS}, got {backend!r}.")


def first_code_line(prediction: str) -> str:
    """The first generated line that is not a comment or markdown fence ('' if none)."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim_score(prediction: str, ground_truth: str, code_sim_backend: CodeSimBackend = "difflib", **kwargs) -> float:
    return fuzz_ratio(first_code_line(prediction), ground_truth, code_sim_backend) / 100


# ---- synthetic tasks: plain string matching (RULER's string_match_all; passkey's first integer) ----

_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def string_match_all(prediction: str, ground_truth: str | Sequence[str], **kwargs) -> float:
    """Share of the gold strings found, case-insensitively, in the prediction (control chars -> newline)."""
    golds = [ground_truth] if isinstance(ground_truth, str) else list(ground_truth)
    text = _CONTROL_CHARS.sub("\n", prediction.strip()).lower()
    return sum(gold.lower() in text for gold in golds) / len(golds)


def first_integer_match(prediction: str, ground_truth: str, **kwargs) -> float:
    """1 when the first integer in the prediction equals the gold number (the passkey test)."""
    found = _NUMBER.search(prediction)
    return float(found is not None and found.group() == ground_truth)


Metric = Callable[..., float]

METRICS: dict[str, Metric] = {
    fn.__name__: fn
    for fn in (
        qa_f1_score,
        qa_f1_zh_score,
        rouge_score,
        rouge_zh_score,
        classification_score,
        retrieval_score,
        retrieval_zh_score,
        count_score,
        code_sim_score,
        string_match_all,
        first_integer_match,
    )
}

#: metrics that score one gold answer 0 or 1 (string_match_all gives a share when it gets several at once)
BINARY_METRICS = frozenset({"first_integer_match", "string_match_all"})
