"""tokenleap: multi-token decoding for Hugging Face causal LMs."""

from .decoding.quality import law_pit, perplexity, uniformity_pvalue
from .decoding.stats import DecodeStats
from .decoding.warping import Sampling
from .errors import TokenleapError
from .generation import GenerationResult, GenerationStream, generate, get_model
from .methods import METHODS
from .models import DEFAULT_MODEL, REGISTRY, Model, load_model

__all__ = ["generate", "load_model", "get_model", "Model", "GenerationResult", "GenerationStream",
           "DecodeStats", "Sampling", "TokenleapError", "METHODS", "REGISTRY", "DEFAULT_MODEL", "perplexity",
           "law_pit", "uniformity_pvalue"]
__version__ = "0.1.0"
