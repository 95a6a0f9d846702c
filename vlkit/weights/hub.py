"""Fetching named weights: timm models (``timm.create_model(name, pretrained=True)``) and BERT
repositories of the Hugging Face hub. Without network either fails with a :class:`TowerInitError`
that says how to make a local copy and point the recipe at it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from vlkit.weights.sources import TowerInitError, timm_name_problem

log = logging.getLogger("vlkit.weights")

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _remote_missing(err: BaseException) -> bool:
    """The hub answered that the repository or file does not exist (as opposed to no answer at all)."""
    from huggingface_hub import errors

    return isinstance(err, errors.RepositoryNotFoundError | errors.RemoteEntryNotFoundError | errors.GatedRepoError)


def timm_offline_message(name: str, key: str, err: BaseException) -> str:
    """How to use a local copy of timm model ``name`` when it cannot be downloaded."""
    stem = name.split(":")[-1].split("/")[-1]
    deit = ""
    if stem.startswith("deit"):
        deit = " (DeiT's release files, e.g. deit_base_patch16_224-b5f2ef4d.pth, work too)"
    return (f"{key}: could not download the weights of timm model `{name}` ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). Without network, make a local copy: on a "
            f"machine with network run `python -c \"import timm, torch; torch.save(timm.create_model('{name}', "
            f"pretrained=True).state_dict(), '{stem}.pth')\"`, copy {stem}.pth here and set "
            f"`{key}: /path/to/{stem}.pth`{deit}")


def hub_offline_message(repo: str, key: str, err: BaseException) -> str:
    """How to use a local copy of hub repository ``repo`` when it cannot be downloaded."""
    stem = repo.split("/")[-1]
    return (f"{key}: could not download `{repo}` from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). Without network, make a local copy: on a "
            "machine with network run `python -c \"from huggingface_hub import snapshot_download; "
            f"snapshot_download('{repo}', local_dir='{stem}', allow_patterns=['config.json', 'model.safetensors', "
            f"'vocab.txt', 'tokenizer*'])\"`, copy the folder {stem}/ here and set `{key}: /path/to/{stem}` "
            "(the same folder serves as data.tokenizer)")


def timm_state_dict(name: str, key: str) -> tuple[dict[str, Tensor], nn.Module]:
    """The pre-trained weights of timm model ``name`` (downloaded or from the local cache) and the
    model they came from (for its shape: heads, image size). The global RNG is left as it was."""
    import timm

    if (problem := timm_name_problem(name)) is not None:
        raise TowerInitError(f"{key}: {problem}")
    with torch.random.fork_rng(devices=[]):
        try:
            model = timm.create_model(name, pretrained=True)
        except (OSError, ConnectionError) as err:  # hub / urllib errors, offline mode
            if _remote_missing(err):
                raise TowerInitError(f"{key}: timm model `{name}` has no weights on the hub ({err})") from err
            raise TowerInitError(timm_offline_message(name, key, err)) from err
        except RuntimeError as err:  # "No pretrained weights exist for ..."
            raise TowerInitError(f"{key}: {err}") from err
    log.info("%s: timm model %s (pretrained weights)", key, name)
    return {k: v.detach() for k, v in model.state_dict().items()}, model


def hub_folder(repo: str, key: str) -> Path:
    """A local folder holding ``config.json`` and the weights of hub repository ``repo`` (downloaded
    into, or found in, the Hugging Face cache)."""
    from huggingface_hub import hf_hub_download

    try:
        config = Path(hf_hub_download(repo, "config.json"))
        last: BaseException | None = None
        for name in HF_WEIGHTS:
            try:
                hf_hub_download(repo, name)
                log.info("%s: %s from the Hugging Face hub (%s)", key, repo, config.parent)
                return config.parent
            except OSError as err:
                if not _remote_missing(err):
                    raise
                last = err
        raise TowerInitError(f"{key}: hub repository `{repo}` has none of {', '.join(HF_WEIGHTS)} ({last})")
    except (OSError, ConnectionError) as err:
        if _remote_missing(err):
            raise TowerInitError(f"{key}: `{repo}` is not a local path and not a repository on the Hugging Face "
                                 f"hub ({type(err).__name__})") from err
        raise TowerInitError(hub_offline_message(repo, key, err)) from err
