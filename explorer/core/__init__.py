"""The shared ground every stage stands on: the vocabulary of labels, modalities and modes (vocab), atomic and bounded
files (storage), intervals and paired tests (intervals, paired), redaction of harmful text (redact), and the
multi-process plumbing (distributed, run_lock). Imports nothing else of explorer.
"""
