# Unit tests of coordinator/ (tokenizer, chat templates, sampling).
