"""Loading and saving DA3 weights in the official Hugging Face layout (config.json + model.safetensors).

Only safetensors is ever read (no pickle). Keys are mapped explicitly between the official names
(``model.backbone.pretrained.blocks.0...``, nested ``model.da3.`` / ``model.da3_metric.``) and ours, and checked
strictly: a missing or unexpected key, or a wrong shape, is an error that names the keys.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from da3_splat.errors import WeightsError
from da3_splat.files import atomic_path, write_json
from da3_splat.model.config import CONFIGS, OFFICIAL_MODELS, DA3Config, get_config
from da3_splat.model.dpt import HEAD_CHUNK

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"  # models shipped inside the package
# The ray branch's LayerNorm is one module shared by four levels; de-duplicated files keep only level 0.
_SHARED_LN = re.compile(r"^(.*head\.scratch\.output_conv2_aux\.)([0-3])(\.2\.(?:weight|bias))$")


# --------------------------------------------------------------------------------------------------
# Key mapping


def official_to_ours(key: str) -> str:
    if not key.startswith("model."):
        raise WeightsError(f"unexpected key {key!r}: official DA3 keys start with 'model.'")
    k = key[len("model.") :]
    k = re.sub(r"^da3_metric\.", "metric.", k)
    k = re.sub(r"^da3\.", "anyview.", k)
    # Only the ViT sits under backbone.pretrained (the camera decoder has its own, unrelated `backbone`).
    return re.sub(r"^((?:anyview\.|metric\.)?)backbone\.pretrained\.", r"\1backbone.", k)


def ours_to_official(key: str) -> str:
    k = re.sub(r"^((?:anyview\.|metric\.)?)backbone\.", r"\1backbone.pretrained.", key)
    k = re.sub(r"^anyview\.", "da3.", k)
    k = re.sub(r"^metric\.", "da3_metric.", k)
    return "model." + k


def _fill_shared_layernorm(sd: dict[str, torch.Tensor]) -> None:
    """A de-duplicated file stores the shared ray LayerNorm once, as level 0: copy it to the other names."""
    for key in list(sd):
        m = _SHARED_LN.match(key)
        if m and m.group(2) == "0":
            for level in "123":
                sd.setdefault(f"{m.group(1)}{level}{m.group(3)}", sd[key])


def check_and_map(model: torch.nn.Module, file_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-named tensors -> our state dict, strictly checked against ``model``."""
    sd = {official_to_ours(k): v for k, v in file_sd.items()}
    _fill_shared_layernorm(sd)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != expected[k])
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(ours_to_official(k) for k in keys[:8])
            problems.append(f"{len(keys)} {label} key(s): {shown}{' ...' if len(keys) > 8 else ''}")
    if wrong:
        shown = ", ".join(f"{ours_to_official(k)} {tuple(sd[k].shape)} != {expected[k]}" for k in wrong[:8])
        problems.append(f"{len(wrong)} shape mismatch(es): {shown}")
    if problems:
        raise WeightsError(f"checkpoint does not match {model.config.model_name}: " + "; ".join(problems))
    return sd


# --------------------------------------------------------------------------------------------------
# Resolving a source


def _read_config(path: Path) -> DA3Config:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read {path}: {e}") from None
    name = data.get("model_name")
    # A model saved by da3-splat whose architecture differs from the named one (e.g. an official backbone with
    # a trained NVS head, or a new config) carries its full architecture.
    if isinstance(data.get("config"), dict) and name:
        return DA3Config.from_dict({**data["config"], "model_name": name})  # not registered: no global changes
    if name in CONFIGS:
        return get_config(name)
    raise WeightsError(f"{path}: 'model_name' is {name!r}, not one of {', '.join(sorted(CONFIGS))}")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        cfg = hf_hub_download(repo_id, CONFIG_FILE)
        hf_hub_download(repo_id, WEIGHTS_FILE)
    except Exception as e:  # offline, unknown repo, gated repo, ...: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"could not get '{repo_id}' from the Hugging Face Hub ({reason}). On a machine with network access run "
            f"`huggingface-cli download {repo_id} config.json model.safetensors --local-dir DIR`, then pass DIR"
        ) from None
    return Path(cfg).parent


def resolve_source(src: str | os.PathLike) -> tuple[Path, DA3Config | None]:
    """-> (weights file, config or None when it must be inferred from the keys)."""
    path = Path(src).expanduser()
    if not path.exists() and (BUNDLED_DIR / str(src)).is_dir():
        path = BUNDLED_DIR / str(src)
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise WeightsError(f"{path} has no {WEIGHTS_FILE}")
        if not (path / CONFIG_FILE).is_file():
            raise WeightsError(f"{path} has no {CONFIG_FILE} (it must name the architecture in 'model_name')")
        return path / WEIGHTS_FILE, _read_config(path / CONFIG_FILE)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path}: only .safetensors weights are read (no pickle/.pt/.bin)")
        sibling = path.parent / CONFIG_FILE
        return path, _read_config(sibling) if sibling.is_file() else None
    s = str(src)
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", s) and not s.startswith("."):
        folder = _download(s)
        return folder / WEIGHTS_FILE, _read_config(folder / CONFIG_FILE)
    raise WeightsError(f"weights not found: {s!r} is neither a file, a folder, nor a Hugging Face repo id")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise WeightsError(f"cannot read {path} as safetensors: {e}") from None


def _infer_config(cls, keys_shapes: dict[str, tuple]) -> DA3Config:
    """The registered architecture whose ``cls`` model has exactly these keys and shapes."""
    for cfg in CONFIGS.values():
        with torch.device("meta"):
            model = cls(cfg)
        try:
            check_and_map(model, {k: torch.empty(s, device="meta") for k, s in keys_shapes.items()})
            return cfg
        except WeightsError:
            continue
    raise WeightsError("no known DA3 architecture matches this file's keys; put a config.json beside it")


def load_pretrained(cls, src, *, device="cpu", dtype=torch.float32, head_chunk: int = HEAD_CHUNK):
    weights, cfg = resolve_source(src)
    file_sd = _read_safetensors(weights)
    if cfg is None:
        cfg = _infer_config(cls, {k: tuple(v.shape) for k, v in file_sd.items()})
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = cls(cfg, head_chunk=head_chunk)
    sd = check_and_map(model, file_sd)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Saving


def official_key_names(model) -> set[str]:
    """Official names of ``model``'s tensors, with each shared tensor kept once under its alphabetically first
    name (what safetensors' save_model does, and so what the Hub files contain)."""
    owner: dict[int, str] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        official = ours_to_official(name)
        owner[id(t)] = min(owner.get(id(t), official), official)
    return set(owner.values())


def official_state_dict(model) -> dict[str, torch.Tensor]:
    keep = official_key_names(model)
    named = {ours_to_official(k): v for k, v in model.state_dict().items()}
    return {k: v.detach().contiguous().cpu() for k, v in named.items() if k in keep}


def save_pretrained(model, directory, overwrite: bool = False) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    targets = [d / WEIGHTS_FILE, d / CONFIG_FILE]
    if not overwrite and any(p.exists() for p in targets):
        raise FileExistsError(f"{d} already holds a model; pass overwrite=True to replace it")
    cfg = model.config
    meta = {"model_name": cfg.model_name}
    if cfg.model_name not in OFFICIAL_MODELS or cfg != get_config(cfg.model_name):
        meta["config"] = cfg.to_dict()
    with atomic_path(targets[0]) as tmp:
        save_file(official_state_dict(model), str(tmp), metadata={"format": "pt"})
    write_json(targets[1], meta)
    return d


def init_vit_weights(model: torch.nn.Module) -> None:
    """Re-draw a randomly initialised DA3's transformer parts the way DINOv2 and VGGT start from scratch, in place:
    truncated-normal (std 0.02) linear weights with zero biases in the backbone and the camera encoder/decoder,
    the position embedding likewise, and the cls/camera tokens near zero (std 1e-6). PyTorch's defaults instead
    leave the position embedding at 0 (no absolute position until it is learned) and draw wider linear weights.
    The DPT heads keep their (convolutional) defaults."""
    parts = [getattr(model, name, None) for name in ("backbone", "cam_enc", "cam_dec")]
    with torch.no_grad():
        for part in filter(None, parts):
            for module in part.modules():
                if isinstance(module, torch.nn.Linear):
                    torch.nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        module.bias.zero_()
        vit = model.backbone
        torch.nn.init.trunc_normal_(vit.pos_embed, std=0.02)
        torch.nn.init.normal_(vit.cls_token, std=1e-6)
        if hasattr(vit, "camera_token"):
            torch.nn.init.normal_(vit.camera_token, std=1e-6)
