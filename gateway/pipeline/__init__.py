"""The request pipeline's stages, one module each; their order is written once, in ``proxy``."""
