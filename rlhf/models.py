"""The one place that builds models and tokenizers, so every stage loads them the same way.

A stage never calls ``from_pretrained`` itself: it asks this module for the tokenizer, for a causal
LM or a reward model (sequence classifier with one label) with the recipe's quantization, for the
LoRA config of its task, and for merging an adapter into a full-precision copy of its base. That
keeps the QLoRA details (NF4 with double quantization, compute dtype, device placement, a pad
token distinct from EOS) in one file, and keeps the reward model loadable in a fresh process
exactly as it was trained.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf import runs
from rlhf.arguments import ModelArguments
from rlhf.config import from_options
from rlhf.tiny.build import MODEL_DIR as TINY_MODEL_DIR
from rlhf_core.errors import ConfigError

logger = logging.getLogger(__name__)

BUILTIN_MODELS = {"builtin:tiny": TINY_MODEL_DIR}
MERGED_DIR = "merged"  # where `rlhf sft --merge_adapter true` writes the merged model, under its output_dir

# Files one of which a saved tokenizer has (fast, sentencepiece, BPE and WordPiece vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")

# Tokens that some families reserve for padding; used before adding a new one, which would need a
# resized (and untrained) embedding row.
_RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "<|endoftext|>", "<unk>")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_model_path(name_or_path: str | None, option: str = "model_name_or_path") -> str:
    """A built-in name (``builtin:tiny``) to its folder, a local folder to its absolute path, a hub id unchanged.

    Local folders become absolute so that an adapter saved on the model records a base that loads
    from any working directory. A name that can only be a local path (``./x``, ``runs/tiny/sft/merged``)
    but does not exist is an error naming the stage that writes it, instead of a hub traceback; so is
    no name at all (a recipe without ``option``).
    """
    if not name_or_path:
        raise ConfigError(
            f"{option}: not set; name the model in the recipe ({option}: ...) or pass --{option} "
            "(a hub id, a model folder, or builtin:tiny; rlhf reward and rlhf ppo start from the merged SFT model, "
            "<sft output_dir>/merged)"
        )
    if name_or_path.startswith("builtin:"):
        if name_or_path not in BUILTIN_MODELS:
            raise ConfigError(f"unknown built-in model {name_or_path!r}; known: {sorted(BUILTIN_MODELS)}")
        path = BUILTIN_MODELS[name_or_path]
        if not (path / "model.safetensors").is_file():
            raise ConfigError(f"{name_or_path}: {path} is missing; run scripts/build_tiny_model.py")
        return str(path)
    local = Path(name_or_path).expanduser()
    if local.exists():
        return str(local.resolve())
    if looks_local(name_or_path):
        raise ConfigError(f"{name_or_path}: no such folder{producer_hint(local)}")
    return name_or_path


def looks_local(name_or_path: str) -> bool:
    """True for what cannot be a hub id: `./x`, `/x`, `~/x`, `a/b/c`, or `runs/x` when a folder `runs/` is here."""
    parts = Path(name_or_path).parts
    return name_or_path.startswith((".", "/", "~")) or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def producer_hint(path: Path) -> str:
    """Which command writes a missing run folder (``<run>/sft/merged`` -> ``rlhf sft``), as advice.

    ``rlhf sft`` writes its merged model to ``<output_dir>/merged``, so the command names the folder
    above ``merged`` as output_dir. The recipe is named when the one this repository's layout puts
    there (``recipes/<run>/<stage>.yaml``, from the working directory) exists, else left for the user.
    """
    merged = path.name == MERGED_DIR
    stage = "sft" if merged else path.name
    if stage not in ("sft", "reward", "ppo"):
        return ""
    output_dir = path.parent if merged else path
    recipe = Path("recipes") / output_dir.parent.name / f"{stage}.yaml"
    config = str(recipe) if recipe.is_file() else f"<your {stage} recipe>"
    what = (
        "the merged SFT model, which `rlhf sft` writes to <output_dir>/merged"
        if merged
        else f"the run folder that `rlhf {stage}` writes"
    )
    command = f"rlhf {stage} --config {config} --output_dir {output_dir}" + (" --merge_adapter true" if merged else "")
    return f"; it is {what}: run that stage first (`{command}`)"


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def why_not_loadable(name: str, error: OSError) -> str:
    """One line saying why transformers could not load ``name`` and what to do, from its multi-line OSError.

    The hub client's exception under transformers' OSError tells which case it is: offline (or the hub
    unreachable) without the model in the cache, no such model (often a misspelt id), a gated model.
    """
    causes = list(_causes(error))
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if Path(name).expanduser().is_dir():
        return first  # a local folder: transformers names the file it lacks
    if any(isinstance(c, GatedRepoError) for c in causes):
        return f"a gated model: accept its terms on https://huggingface.co/{name} and log in (`hf auth login`)"
    if any(isinstance(c, RevisionNotFoundError) for c in causes):
        return "no such revision of this model (model_revision)"
    if any(isinstance(c, RepositoryNotFoundError) for c in causes):
        return "not a local folder nor a model on the hub: check the spelling (a private model needs `hf auth login`)"
    if any(isinstance(c, LocalEntryNotFoundError | OfflineModeIsEnabled) for c in causes):
        offline = " (HF_HUB_OFFLINE is set)" if hub_constants.HF_HUB_OFFLINE else ""
        return (
            f"not a local folder, and not in the hub cache ({hub_constants.HF_HUB_CACHE}) while the hub cannot be "
            f"reached{offline}: check the spelling, or download it where the hub is reachable (`hf download {name}`)"
        )
    return first


@contextlib.contextmanager
def loading(option: str, name: str) -> Iterator[None]:
    """Loading ``name`` (the value of ``option``): a model or tokenizer transformers cannot find is a ConfigError."""
    try:
        yield
    except OSError as error:
        raise ConfigError(f"{option}: {name}: {why_not_loadable(name, error)}") from error


def resolve_dtypes(model_args: ModelArguments, training_args: Any | None = None) -> None:
    """Fill ``dtype`` and ``bnb_4bit_compute_dtype`` left unset from the training precision."""
    if model_args.dtype is None:
        bf16 = bool(getattr(training_args, "bf16", False))
        fp16 = bool(getattr(training_args, "fp16", False))
        model_args.dtype = "bfloat16" if bf16 else "float16" if fp16 else "float32"
    if model_args.bnb_4bit_compute_dtype is None:
        model_args.bnb_4bit_compute_dtype = model_args.dtype if model_args.dtype in DTYPES else "float32"


def autocast_dtype(training_args: Any) -> torch.dtype | None:
    """The mixed precision a run's ``bf16`` / ``fp16`` ask for (autocast), or None for float32."""
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None


def quantization_config(model_args: ModelArguments) -> BitsAndBytesConfig | None:
    """NF4 (or FP4) 4-bit with optional double quantization, 8-bit, or nothing."""
    if model_args.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
            bnb_4bit_compute_dtype=DTYPES[model_args.bnb_4bit_compute_dtype or "float32"],
            bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage,
        )
    if model_args.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def process_device() -> torch.device:
    """This process's device: its local GPU under torchrun/accelerate, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def load_tokenizer(model_args: ModelArguments, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token distinct from EOS (pad == EOS masks EOS out of losses)."""
    option = "tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "model_name_or_path"
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    path = resolve_model_path(name, option)
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(
            f"{option}: {name}: the folder has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save it beside "
            "the model (tokenizer.save_pretrained(folder)), or set tokenizer_name_or_path to the model it came from"
        )
    with loading(option, name):
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
        )
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        reserved = [t for t in _RESERVED_PAD_TOKENS if t in vocab and vocab[t] != tokenizer.eos_token_id]
        if reserved:
            tokenizer.pad_token = reserved[0]
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        logger.info("pad token set to %r (distinct from eos %r)", tokenizer.pad_token, tokenizer.eos_token)
    return tokenizer


def load_adapter_tokenizer(adapter_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer a training stage saved beside its adapter (pad token, chat template included)."""
    return AutoTokenizer.from_pretrained(str(adapter_dir))


def _model_kwargs(model_args: ModelArguments, trust_remote_code: bool) -> dict[str, Any]:
    quant = quantization_config(model_args)
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "trust_remote_code": trust_remote_code,
        "dtype": model_args.dtype if model_args.dtype == "auto" else DTYPES[model_args.dtype or "float32"],
    }
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quant is not None:
        # bitsandbytes places quantized weights at load time, so each process loads onto its own device.
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": process_device()}
    return kwargs


def _keep_4bit_layers_differentiable(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes repacks a ``Linear4bit`` weight, for good, the first time
    the layer runs in eval mode on an input without grad, and from then on calls a kernel that has
    no backward: every later training step (after PPO's rollouts, after the Trainer's evaluation)
    silently loses the gradient that flows through the quantized base weights into earlier layers'
    LoRA (PyTorch only warns "gemv_4bit: an autograd kernel was not registered"). Training on CPU
    needs the weights as loaded; GPUs never take that path.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def match_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_causal_lm(
    model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase, trust_remote_code: bool = False
) -> PreTrainedModel:
    """The base (or SFT-merged) causal LM, quantized as the recipe says."""
    path = resolve_model_path(model_args.model_name_or_path)
    with loading("model_name_or_path", model_args.model_name_or_path):
        model = AutoModelForCausalLM.from_pretrained(path, **_model_kwargs(model_args, trust_remote_code))
    if model_args.quantization == "4bit":
        _keep_4bit_layers_differentiable(model)
    return match_tokenizer(model, tokenizer)


def load_reward_backbone(
    model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A sequence classifier with one output (the reward) on top of the given causal LM checkpoint."""
    path = resolve_model_path(model_args.model_name_or_path)
    kwargs = _model_kwargs(model_args, trust_remote_code)
    with loading("model_name_or_path", model_args.model_name_or_path):
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    if model_args.quantization == "4bit":
        _keep_4bit_layers_differentiable(model)
    return match_tokenizer(model, tokenizer)


def match_trainable_dtype(model: torch.nn.Module, mixed_precision: bool) -> None:
    """Keep trainable weights in float32 when training without bf16/fp16 autocast.

    TRL casts the trainable parameters of a quantized model to bf16 (QLoRA's recipe, which assumes
    bf16 autocast). Without autocast (fp32 training, as on CPU) a bf16 score head then meets fp32
    hidden states, and bf16 weights would lose small updates: float32 is right there.
    """
    if mixed_precision:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()


def lora_config(model_args: ModelArguments, task_type: str) -> LoraConfig | None:
    """The recipe's LoRA for a task ("CAUSAL_LM" or "SEQ_CLS").

    With ``SEQ_CLS`` PEFT keeps the randomly initialised ``score`` head as a fully trained module
    saved with the adapter, instead of putting a LoRA on it ("all-linear" would), so the saved
    reward model can be rebuilt exactly.
    """
    if not model_args.use_peft:
        return None
    targets = model_args.lora_target_modules
    return LoraConfig(
        task_type=task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets[0] if isinstance(targets, list) and len(targets) == 1 else targets,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
    )


def load_reward_model(run_dir: str | Path) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """A trained reward model from its run folder, rebuilt exactly as the reward stage trained it.

    The run's resolved config names the backbone and its quantization; the adapter folder holds
    the LoRA and the score head (saved as a module of the SEQ_CLS adapter).
    """
    options = runs.read_config(run_dir)
    (model_args,) = from_options([ModelArguments], options)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    backbone = load_reward_backbone(model_args, tokenizer, bool(options.get("trust_remote_code", False)))
    model = PeftModel.from_pretrained(backbone, str(run_dir))
    model.eval()
    return model, tokenizer
