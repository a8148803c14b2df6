"""The training scorer: NAMM candidates scored on task prompts (`scorer._target_` of conf/train.yaml names
`tasks.training.task_scorer.TaskScorer`), with its training signals and the distilled start's examples.

It uses the task core (`tasks/`: data, prompts, metrics, references) and `namm`; the task core imports
nothing from here, and the evaluation pipeline (`tasks/evaluation/`) nothing either.
"""
