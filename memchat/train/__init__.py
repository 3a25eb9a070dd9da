"""Training memchat's own small memory model (memchat-nano) on a synthetic personal-facts chat domain.

domain.py / domain_data.py: the episodes; text.py: tokenizer and chat encoding; nano.py: model sizes,
initialisation and export; trainer.py: the training loop; cli.py: `memchat train nano`.
"""
