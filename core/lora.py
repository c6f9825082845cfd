"""LoRA through peft, beside the freeze map: which layers get adapters, what trains in full, the wrap.

How the two combine: under LoRA the freeze map's catch-all (`train all`, which is the `all` and
`freeze-embeddings` presets' first rule) freezes instead, and a classification model's new head
trains, since a random head cannot be left frozen. Whatever the map then trains in full (the head, a
top-n preset's blocks, a user's train rule) trains in full through peft's `modules_to_save`; the
targets (`lora.targets`) get adapters in the frozen rest. A target inside a module trained in full
gets none: full training already covers it.

Targets are resolved here, to exact module paths, rather than by peft's own suffix matching, so a
target that matches nothing is an error naming `lora.targets`, and the freeze screen can mark the
layers that get adapters. torch and peft are imported inside the functions: the app imports this
module.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

from core.config import FreezeConfig, LoraConfig, RunConfig
from core.describe import ModelDescription, within
from core.errors import UserError
from core.freeze import (
    PresetRule,
    base_name,
    effective_rules,
    match_problem,
    matcher,
    resolve,
)

PRESETS = ("attention", "all-linear")
"""Target presets: the linear layers inside the blocks' attention modules, or every linear layer
but the output head."""


@dataclass
class LoraPlan:
    targets: list[str]
    """Module paths that get adapters."""
    modules_to_save: list[str]
    """Module paths the freeze map trains in full (peft keeps a trained copy of each)."""
    rules: list
    """The effective freeze rules under LoRA (see the module's docstring)."""
    transposed: bool = False
    """The targets are GPT-2-style Conv1D layers, whose weight is stored (in, out): peft's fan_in_fan_out."""


def peft_features() -> set[str]:
    """The LoRA options the installed peft has (`use_dora`, `use_rslora`): older versions lack them."""
    from peft import LoraConfig as PeftLoraConfig

    return {name for name in ("use_dora", "use_rslora") if name in PeftLoraConfig.__dataclass_fields__}


def quantize_problem(lora: LoraConfig, cuda_available: bool) -> UserError | None:
    """Why `lora.quantize` cannot run here, or None: 4-bit QLoRA needs a CUDA GPU and bitsandbytes."""
    if not lora.quantized:
        return None
    missing = [what for what, present in (("a CUDA GPU", cuda_available),
                                          ("bitsandbytes", importlib.util.find_spec("bitsandbytes") is not None))
               if not present]
    if not missing:
        return None
    reason = f"needs {' and '.join(missing)}"
    return UserError(f"lora.quantize {lora.quantize} (QLoRA) {reason}",
                     "set lora.quantize: none (plain LoRA)" + (", or pip install bitsandbytes" if cuda_available else ""),
                     {"lora.quantize": reason})


def four_bit_load_options(dtype) -> dict:
    """from_pretrained's arguments for QLoRA's frozen base: NF4 weights with double quantization,
    computing in bf16 where the GPU has it (the fp32 master dtype would make every 4-bit matmul
    dequantize to fp32). 4-bit weights are made on the GPU as they load; each process puts its copy
    on its own one. Asked only after quantize_problem passed."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute if dtype in (None, torch.float32) else dtype)
    return {"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}


LORA_LR_RANGE = (1e-4, 5e-4)
"""The learning rates LoRA adapters usually train at: the LoRA paper's RoBERTa runs used 4e-4 to
5e-4, QLoRA's 1e-4 to 2e-4, where full fine-tuning takes 1e-5 to 5e-5."""


def lr_advice(config: RunConfig) -> str | None:
    """A word when LoRA trains below LORA_LR_RANGE, as at a full fine-tuning rate: the adapters start
    at zero and barely move (the MiniLM demo with LoRA: accuracy 0.36 -> 0.35 at its 5e-5, 0.36 ->
    0.80 at 5e-4)."""
    if not config.lora.enabled or config.optim.lr >= LORA_LR_RANGE[0]:
        return None
    low, high = (f"{rate:.0e}".replace("e-0", "e-") for rate in LORA_LR_RANGE)  # 1e-4, as people write it
    return f"optim.lr {config.optim.lr:g} is low for LoRA: adapters usually train at {low} to {high}"


def lora_problem(lora: LoraConfig) -> UserError | None:
    """Settings of `lora` that cannot work before any model is loaded: a bad target regex, or an
    option the installed peft lacks."""
    fields = {f"lora.targets.{i}": problem for i, target in enumerate(lora.targets)
              if target not in PRESETS and (problem := match_problem(target))}
    if lora.enabled and (lora.use_dora or lora.use_rslora):
        missing = {"use_dora", "use_rslora"} - peft_features()
        fields.update({f"lora.{name}": "the installed peft does not have it" for name in sorted(missing)
                       if getattr(lora, name)})
    if not fields:
        return None
    hints = [*(["fix the regex after 're:'"] if any(name.startswith("lora.targets") for name in fields) else []),
             *(["upgrade peft (pip install -U peft) for DoRA / rsLoRA"]
               if any(not name.startswith("lora.targets") for name in fields) else [])]
    return UserError("; ".join(f"{name}: {problem}" for name, problem in fields.items()), "; ".join(hints), fields)


def adaptable_layers(model) -> dict[str, str]:
    """Every layer peft can put an adapter on, by module path: `linear` (nn.Linear and GPT-2's
    Conv1D, a linear layer with its weight transposed) or `embedding`."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    layers = {}
    for path, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            layers[base_name(path)] = "linear"
        elif isinstance(module, nn.Embedding):
            layers[base_name(path)] = "embedding"
    return layers



def _preset_targets(preset: str, model, desc: ModelDescription, layers: dict[str, str]) -> list[str]:
    linear = [path for path, kind in layers.items() if kind == "linear"]
    if preset == "all-linear":
        return [path for path in linear if not within(path, desc.head)]
    # attention: the linear layers below a module of a block whose class is an attention class
    # (LlamaAttention, GPT2Attention, BertAttention, DistilBERT's MultiHeadSelfAttention).
    attention = [path for path, module in model.named_modules()
                 if within(path, desc.blocks) and "Attention" in type(module).__name__]
    return [path for path in linear if within(path, attention)]


def resolve_targets(model, desc: ModelDescription, targets: list[str]) -> list[str]:
    """The module paths `targets` name, in model order. A pattern covers the adaptable layers at and
    below the modules it matches, as a freeze rule does; one that covers none is a UserError."""
    if problem := lora_problem(LoraConfig(targets=targets)):
        raise problem
    layers = adaptable_layers(model)
    chosen: set[str] = set()
    for i, target in enumerate(targets):
        if target in PRESETS:
            found = _preset_targets(target, model, desc, layers)
        else:
            match = matcher(target)
            found = [path for path in layers if any(match(p) for p in _ancestors(path))]
        if not found:
            examples = ", ".join(list(layers)[:4]) or "none"
            raise UserError(f"lora.targets: {target!r} matches no linear or embedding layer of the model",
                            f"use a preset ({', '.join(PRESETS)}) or a module path or pattern, e.g. {examples}",
                            {f"lora.targets.{i}": "matches no linear or embedding layer"})
        chosen.update(found)
    return [path for path in layers if path in chosen]


def _ancestors(path: str) -> list[str]:
    """The path and every module path above it."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def lora_rules(freeze: FreezeConfig, desc: ModelDescription, task: str) -> list:
    """The freeze rules under LoRA: the catch-all `train all` of a preset freezes instead, and a
    classification head trains (it starts random); the user's rules come after and still win."""
    rules = effective_rules(freeze, desc)
    if freeze.preset not in ("all", "freeze-embeddings"):
        return rules
    preset = [rule for rule in rules if isinstance(rule, PresetRule)]
    head = [PresetRule(match=path, train=True) for path in desc.head] if task == "classification" else []
    return [PresetRule(match="*", train=False)] + head + rules[len(preset):]


def trained_in_full(model, rules: list) -> list[str]:
    """The largest modules below the root whose every parameter the rules train: peft's
    modules_to_save. A module with some parameters trained and some not is not one."""
    states = resolve(model, rules)

    def visit(prefix: str, module) -> list[str]:
        found = []
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            params = [f"{path}.{n}" for n, _ in child.named_parameters(remove_duplicate=False)]
            if params and all(states[n].train for n in params):
                found.append(path)
            elif any(states[n].train for n in params):
                found += visit(path, child)
        return found

    return visit("", model)


def plan_lora(model, desc: ModelDescription, config: RunConfig) -> LoraPlan:
    """What LoRA will adapt and what trains in full, for the unwrapped `model`."""
    rules = lora_rules(config.freeze, desc, config.task)
    full = trained_in_full(model, rules)
    targets = [path for path in resolve_targets(model, desc, config.lora.targets) if not within(path, full)]
    if not targets:
        raise UserError("lora.targets: every target lies in modules the freeze map trains in full",
                        "target layers outside them, or freeze less (e.g. freeze.preset: head-only)",
                        {"lora.targets": "every target is trained in full by the freeze map"})
    if config.lora.merge_on_export and (tied := _tied_targets(model, targets)):
        raise UserError(f"lora.merge_on_export cannot merge adapters on {', '.join(tied)}: the model ties its "
                        "output head and input embedding to one weight, and the merge would add both adapters "
                        "to it (the merged model was not the trained one)",
                        "leave the head and the embedding out of lora.targets (`all-linear` does), or export the "
                        "adapter alone (lora.merge_on_export: false)", {"lora.merge_on_export": "tied target"})
    from transformers.pytorch_utils import Conv1D

    transposed = any(isinstance(model.get_submodule(path), Conv1D) for path in targets)
    return LoraPlan(targets, full, rules, transposed)


def _tied_targets(model, targets: list[str]) -> list[str]:
    """The targets that are the output head or the input embedding of a model that ties the two."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None or outputs.weight is not inputs.weight:
        return []
    return [path for path in targets if model.get_submodule(path) in (inputs, outputs)]


def trains_tied_weights(model, plan: LoraPlan) -> bool:
    """Whether peft's weight tying has work under the plan: the model ties its LM head to its input
    embedding, and one of them trains, in full or through an adapter. peft recognises them by name
    only (EMBEDDING_LAYER_NAMES: `embed_tokens`, `lm_head`); GPT-2's `transformer.wte` as a target it
    leaves alone, and warns where it is asked to tie."""
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None or outputs.weight is not inputs.weight:
        return False
    return any(path.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES for path in [*plan.targets, *plan.modules_to_save])


def peft_config(lora: LoraConfig, plan: LoraPlan, task: str, tied: bool):
    """peft's LoraConfig for the plan; DoRA / rsLoRA only when set (older peft lacks the fields).

    `ensure_weight_tying` where peft has it and the plan trains tied weights (`tied`,
    trains_tied_weights): without it, a tied LM head trained in full (its embedding comes along)
    became two trained copies that drifted apart (0.06 after three steps on the tiny demo): a model
    no longer tied as its base is, with twice those parameters' gradients and AdamW state (on a
    SmolLM2-135M head, 28M parameters: 340 MB more). Asked for where nothing tied trains, peft
    warns at every wrapping and, as the flag is saved with the adapter, at every load of the export.
    peft edits the lists it is given (it drops the tied head it handles), so it gets copies."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    extra = {name: True for name in ("use_dora", "use_rslora") if getattr(lora, name)}
    if tied and "ensure_weight_tying" in PeftLoraConfig.__dataclass_fields__:
        extra["ensure_weight_tying"] = True
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(plan.targets), modules_to_save=list(plan.modules_to_save) or None,
                          fan_in_fan_out=plan.transposed,
                          task_type=TaskType.CAUSAL_LM if task == "causal-lm" else None, **extra)


def apply_lora(model, desc: ModelDescription, config: RunConfig):
    """Wrap `model` with peft's get_peft_model: adapters on the targets, trained copies of what the
    freeze map trains in full, everything else frozen. Returns the PeftModel, the plan (its rules
    give the optimizer's lr scales) and the summary with the adapters counted."""
    from peft import get_peft_model

    from core.freeze import summarize_trained, training_problem

    plan = plan_lora(model, desc, config)
    if config.lora.quantize != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    tied = trains_tied_weights(model, plan)
    with warnings.catch_warnings():  # peft reads the property transformers 5 deprecated: noise atop every LoRA run
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        wrapped = get_peft_model(model, peft_config(config.lora, plan, config.task, tied))
    summary = summarize_trained(wrapped, plan.rules)
    if problem := training_problem(summary):
        raise problem
    return wrapped, plan, summary


def preview(skeleton, desc: ModelDescription, config: RunConfig):
    """For the freeze screen: the summary, the plan and the adapters' sizes (core.memory.Adapters)
    LoRA would give, computed on a copy of the model's skeleton on the meta device (peft wraps it
    without memory or weights), so the screen's memory estimate counts the adapters peft really
    adds (an LM head tied to a targeted embedding gets one too), as the dry run does."""
    import copy

    from core.memory import adapter_sizes

    wrapped, plan, summary = apply_lora(copy.deepcopy(skeleton), desc, config)
    return summary, plan, adapter_sizes(wrapped)
