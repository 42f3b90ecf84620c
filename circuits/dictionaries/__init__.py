"""Dictionary features: sparse autoencoders and transcoders, trained here or loaded from
SAELens's folder format, usable as a feature basis everywhere a `UnitBasis` is.

    d = cc.train_dictionary(cache, 512, site="blocks.0.hook_resid_post")
    d.save("sae/"); d = cc.load_dictionary("sae/")
    basis = d.as_basis()
    ex = top_examples(model, tokens, d, k=8); ex.text(3)   # what makes latent 3 fire
"""

from circuits.dictionaries.config import Activation, DictionaryConfig, Kind
from circuits.dictionaries.dictionary import Dictionary, DictionaryBasis
from circuits.dictionaries.evaluate import evaluate_dictionary
from circuits.dictionaries.examples import TopExamples, top_examples
from circuits.dictionaries.files import Layout, load_dictionary, save_dictionary
from circuits.dictionaries.train import TrainConfig, train_dictionary

__all__ = [
    "Activation",
    "Dictionary",
    "DictionaryBasis",
    "DictionaryConfig",
    "Kind",
    "Layout",
    "TopExamples",
    "TrainConfig",
    "evaluate_dictionary",
    "load_dictionary",
    "save_dictionary",
    "top_examples",
    "train_dictionary",
]
