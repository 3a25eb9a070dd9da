"""Evaluations of memory models: `retention.py` (the paper's knowledge-retention protocol) and `cli.py`
(`memchat eval retention`)."""
