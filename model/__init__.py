"""PyTorch seq2seq model code shipped inside the training/serving container.

Importing the package is cheap on purpose: the data-preparation steps reuse its format modules
(`model.vocab`, `model.recordio`) without paying for torch.
"""
