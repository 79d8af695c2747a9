"""M2GAN: multimodal (text <-> image) GAN training on PyTorch Lightning.

Sampling: ``from m2gan.model import M2GAN; M2GAN.load(path).generate([...])``.
"""
