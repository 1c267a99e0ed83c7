"""Stage 5, evaluation: judging answers (judge, judge_model, verdicts, verdict_stats), choosing strengths on
calibration data (calibration), running an evaluation (eval_settings, runner, eval_records, eval_metrics) and
comparing runs (compare, run_view).
"""
