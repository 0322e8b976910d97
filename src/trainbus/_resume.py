"""Exact resume: what a training checkpoint holds besides the weights, and the resumed fit.

A training checkpoint is written at a batch boundary (``phase`` ``"train"`` or
``"valid"``: after batch ``iter`` of that phase) or at the end of an epoch (``"end"``).
Its ``"train"`` entry holds::

    loop       n_epoch, epoch, phase, iter, train_iter, pct_train, training
    grads      the parameters' gradients (accumulation may be under way)
    callbacks  every callback's state_dict(), keyed by class name ("Recorder", "MixUp#2")
    rng        Python, torch CPU, CUDA (when initialised) and NumPy (when imported) states
    data       batches per epoch, the loaders' generator states, a stateful loader's own
               state, and for a mid-phase checkpoint the phase start (see PhaseStart)

On many processes the file holds every rank's own entry, and each rank resumes from its
own (see :mod:`trainbus._ranks`).

A fit resumed from it runs ``begin_fit`` (and, mid-phase, ``begin_epoch`` and
``begin_train``/``begin_validate``) as usual, then restores all of that and goes on with
the next batch: callbacks find their state as it was, whatever those events reset.
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs
import torch

from ._callback import Callback
from ._checkpoint import (
    CheckpointError,
    PathLike,
    check_model,
    check_optimizer,
    load_weights,
    read_checkpoint,
    tensor_of,
    unwrap_model,
)
from ._distributed import from_rank_zero
from ._ranks import processes, rank_entry
from ._state import FieldName, StateKey

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = ["PHASE_START", "Phase", "PhaseStart", "ResumePlan", "training_state"]

Phase = Literal["train", "valid", "end"]

_LOADERS: Final = ("train", "valid")


@final
@attrs.frozen(eq=False)
class PhaseStart:
    """The random state just before a phase's loader was iterated: its data position.

    With the number of batches done, it reproduces the rest of the phase's batches: the
    loader is iterated again from this state, and the batches done are skipped.
    """

    rng: dict[str, Any]
    generators: list[torch.Tensor]


PHASE_START: Final = StateKey("trainbus.phase_start", PhaseStart)
"""Published by :class:`~trainbus.callbacks.Checkpoint` (by its stand-in on ranks other
than 0) at the start of every phase in which it may take a checkpoint."""


def rng_state() -> dict[str, Any]:
    """The global random states: Python, torch CPU, CUDA (if initialised), NumPy (if imported).

    As the generators give them (cheap: taken at every phase start); :func:`portable_rng`
    converts them for a checkpoint file.
    """
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        numpy: Any = importlib.import_module("numpy")
        state["numpy"] = numpy.random.get_state(legacy=False)
    return state


def portable_rng(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (of :func:`rng_state`) as tensors, numbers and strings, which
    ``torch.load(weights_only=True)`` reads back; converted states are left as they are."""
    portable = dict(state)
    version, words, gauss = state["python"]
    if not isinstance(words, torch.Tensor):  # one object to save, not 625
        portable["python"] = (version, tensor_of(words, torch.int64), gauss)
    raw = state.get("numpy")
    if raw is not None and "state" in raw:
        numpy: Any = importlib.import_module("numpy")
        portable["numpy"] = {
            "bit_generator": str(raw["bit_generator"]),
            "key": torch.as_tensor(raw["state"]["key"].astype(numpy.int64)),
            "pos": int(raw["state"]["pos"]),
            "has_gauss": int(raw["has_gauss"]),
            "gauss": float(raw["gauss"]),
        }
    return portable


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`portable_rng` returned."""
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words.tolist()), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("numpy")
    if saved is not None:
        numpy: Any = importlib.import_module("numpy")
        numpy.random.set_state(
            {
                "bit_generator": saved["bit_generator"],
                "state": {"key": saved["key"].numpy().astype(numpy.uint32), "pos": saved["pos"]},
                "has_gauss": saved["has_gauss"],
                "gauss": saved["gauss"],
            }
        )


def loader_generators(dl: object) -> list[torch.Generator]:
    """The ``torch.Generator`` s a loader shuffles with: its own, its samplers', and those
    of a loader it wraps (a data shard's ``source``)."""
    found: list[torch.Generator] = []
    holders: list[object] = [dl]
    for holder in holders:
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
        if len(holders) < 16:  # a bounded walk: wrappers do not nest deeply
            for name in ("sampler", "batch_sampler", "source"):
                inner = getattr(holder, name, None)
                if inner is not None:
                    holders.append(inner)
    return found


def phase_start(dl: object) -> PhaseStart:
    """The data position at the start of a phase over ``dl`` (see :class:`PhaseStart`)."""
    return PhaseStart(rng_state(), [g.get_state() for g in loader_generators(dl)])


def _stateful(dl: object) -> bool:
    """Whether ``dl`` keeps its own position (torchdata's ``StatefulDataLoader``)."""
    return callable(getattr(dl, "state_dict", None)) and callable(
        getattr(dl, "load_state_dict", None)
    )


def _call(dl: object, method: str, *args: object) -> Any:
    """``dl.<method>(*args)``: a method of a stateful loader, which BatchSource does not declare."""
    return getattr(dl, method)(*args)


def _set_generators(dl: object, states: list[torch.Tensor]) -> None:
    for generator, state in zip(loader_generators(dl), states, strict=True):
        generator.set_state(state)


def _skip(dl: Iterable[Any], n: int) -> Iterator[Any]:
    """An iterator over ``dl`` after its first ``n`` batches.

    A single-process ``DataLoader`` over a map-style dataset skips by drawing the batches'
    indices from its sampler, without loading their data. Other loaders (with workers,
    whose random state follows the batches they load; iterable datasets; plain
    iterables) load the skipped batches and drop them.
    """
    iterator = iter(dl)
    sampler_iter: object = getattr(iterator, "_sampler_iter", None)
    by_index = (
        type(iterator).__name__ == "_SingleProcessDataLoaderIter"
        and isinstance(sampler_iter, Iterator)
        and not isinstance(getattr(dl, "dataset", None), torch.utils.data.IterableDataset)
    )
    for done in range(n):
        try:
            next(sampler_iter if by_index else iterator)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
        except StopIteration:
            raise CheckpointError(
                f"the data ended after {done} batches, but the checkpoint was written after "
                f"{n}: resume needs the same data"
            ) from None
    if by_index:
        iterator._num_yielded += n  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
    return iterator


def _keyed(learn: Learner) -> dict[str, Callback]:
    """The callbacks that keep state (override ``state_dict``), by class name (``Name#2``...)."""
    keyed: dict[str, Callback] = {}
    seen: dict[str, int] = {}
    for cb in learn.state.callbacks:
        if type(cb).state_dict is Callback.state_dict:
            continue
        name = type(cb).__qualname__
        seen[name] = seen.get(name, 0) + 1
        keyed[name if seen[name] == 1 else f"{name}#{seen[name]}"] = cb
    return keyed


def training_state(learn: Learner, phase: Phase) -> dict[str, Any]:
    """The ``"train"`` entry of a checkpoint written now, at the end of a batch of ``phase``
    (``"train"``, ``"valid"``) or at the end of an epoch (``"end"``).

    Raises:
        RuntimeError: Mid-phase, no :data:`PHASE_START` was published for the phase.
    """
    values = learn.state.trusted_values
    dls = learn.dls
    loaders = {"train": dls.train, "valid": dls.valid}
    data: dict[str, Any] = {
        "n_batches": {name: len(dl) for name, dl in loaders.items()},
        "generators": {
            name: [g.get_state() for g in loader_generators(dl)] for name, dl in loaders.items()
        },
        "loader": {name: _call(dl, "state_dict") for name, dl in loaders.items() if _stateful(dl)},
    }
    if phase != "end":
        extras = learn.state.extras
        if PHASE_START not in extras:
            raise RuntimeError("a checkpoint inside a phase needs the phase's start (PHASE_START)")
        start = extras[PHASE_START]
        data["phase_start"] = {"rng": portable_rng(start.rng), "generators": start.generators}
    model = unwrap_model(learn.model)
    return {
        "loop": {
            "n_epoch": values["n_epoch"],
            "epoch": values["epoch"],
            "phase": phase,
            "iter": values["iter"],
            "train_iter": values["train_iter"],
            "pct_train": values["pct_train"],
            "training": values["training"],
        },
        "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
        "callbacks": {key: cb.state_dict() for key, cb in _keyed(learn).items()},
        "rng": portable_rng(rng_state()),
        "data": data,
    }


@final
class ResumePlan:
    """A checked training checkpoint, and where the fit resuming from it stands.

    Made by :meth:`prepare` before the fit starts (every check is done there, before
    anything changes); the Learner asks it where to start and lets it restore the state
    at the first batch boundary it reaches.
    """

    __slots__ = ("_applied", "ckpt", "path", "train")

    def __init__(self, path: Path, ckpt: dict[str, Any], train: dict[str, Any]) -> None:
        self.path: Final = path
        self.ckpt: Final = ckpt
        self.train: Final = train  # this rank's entry
        self._applied = False

    @property
    def phase(self) -> Phase:
        """Where the checkpoint was written: in a training or validation phase, or at epoch end."""
        phase: Phase = self.train["loop"]["phase"]
        return phase

    @classmethod
    def prepare(cls, learn: Learner, resume: PathLike, n_epoch: int) -> ResumePlan | None:
        """Read and check the checkpoint ``resume`` names against ``learn`` and this fit.

        ``"latest"`` is the latest checkpoint of the learner's ``Checkpoint`` callback;
        ``None`` when it has written none yet (the fit starts from the beginning).

        On many processes each rank takes its own entry of the file; a file written by
        another number of processes resumes only from an epoch's end.

        Raises:
            FileNotFoundError: No file at ``resume``.
            CheckpointError: It cannot be read, holds weights only, or does not fit the
                model, optimizer, callbacks, data, ``n_epoch`` or (inside an epoch) the
                number of processes.
            ValueError: ``"latest"`` without a ``Checkpoint`` callback.
        """
        if isinstance(resume, str) and resume == "latest":
            from .callbacks._checkpoint import Checkpoint

            writers = [cb for cb in learn.state.callbacks if isinstance(cb, Checkpoint)]
            if not writers:
                raise ValueError(
                    "resume='latest' needs a trainbus.callbacks.Checkpoint callback (the "
                    "latest checkpoint is in its dir); pass a checkpoint path otherwise"
                )
            # Rank 0 (which writes them) names it for all: every rank loads the same file.
            latest = from_rank_zero(lambda: writers[0].latest)
            if latest is None:
                return None
            resume = latest
        path = Path(resume)
        ckpt = read_checkpoint(path)
        train: object = ckpt.get("train")
        if not isinstance(train, dict):
            raise CheckpointError(
                f"{path} holds weights only (written by learn.save): a fit resumes from a "
                "checkpoint written by the Checkpoint callback; use learn.load for weights"
            )
        own = rank_entry(path, ckpt, learn)
        check_model(path, ckpt["model"], learn.model, strict=True)
        check_optimizer(path, ckpt, learn.opt)
        plan = cls(path, ckpt, own)
        plan._check_fit(learn, n_epoch)
        return plan

    def _check_fit(self, learn: Learner, n_epoch: int) -> None:
        loop, data, path = self.train["loop"], self.train["data"], self.path
        if loop["n_epoch"] != n_epoch:
            raise CheckpointError(
                f"{path} was written by a fit of {loop['n_epoch']} epochs; this fit has "
                f"{n_epoch}: resume the same fit (or load the weights with learn.load)"
            )
        saved, current = set(self.train["callbacks"]), set(_keyed(learn))
        unexpected = sorted(k for k in saved - current if not k.startswith("Checkpoint"))
        if unexpected:
            raise CheckpointError(
                f"{path} holds the state of callback {unexpected[0]}, which this learner does "
                "not have: resume with the callbacks of the fit that wrote it"
            )
        missing = sorted(current - saved)
        if missing:
            raise CheckpointError(
                f"{path} holds no state for callback {missing[0]}: it was written by a fit "
                "without it; resume with the callbacks of that fit"
            )
        dls = learn.dls
        for name, dl in (("train", dls.train), ("valid", dls.valid)):
            if len(dl) != data["n_batches"][name]:
                raise CheckpointError(
                    f"{path} was written with {data['n_batches'][name]} {name} batches per "
                    f"epoch; this learner's {name} data has {len(dl)}: resume needs the same "
                    f"data{self._sizes(learn)}"
                )
            if len(loader_generators(dl)) != len(data["generators"][name]):
                raise CheckpointError(
                    f"{path} does not fit the {name} loader: it was written with "
                    f"{len(data['generators'][name])} random generators, this loader has "
                    f"{len(loader_generators(dl))}"
                )
        cuda = self.train["rng"].get("cuda")
        if (
            cuda is not None
            and torch.cuda.is_available()
            and len(cuda) != torch.cuda.device_count()
        ):
            raise CheckpointError(
                f"{path} holds the random states of {len(cuda)} CUDA devices; this process "
                f"sees {torch.cuda.device_count()}"
            )

    def _sizes(self, learn: Learner) -> str:
        """A hint when the number of processes changed (the batches per process with it)."""
        saved: int = self.ckpt.get("world_size", 1)
        if saved == learn.world_size:
            return ""
        return (
            f" (the file was written by a fit on {processes(saved)}, this fit runs on "
            f"{learn.world_size}: each process's share of the data changed)"
        )

    def first_epoch(self, learn: Learner) -> int:
        """The epoch the resumed fit starts with; at an epoch's end, restores the state now."""
        epoch: int = self.train["loop"]["epoch"]
        if self.phase == "end":
            self._restore(learn)
            return epoch + 1
        return epoch

    def skips_train(self) -> bool:
        """Whether the epoch the fit resumes in goes straight to validation."""
        return not self._applied and self.phase == "valid"

    def open(self, learn: Learner, dl: Iterable[Any]) -> tuple[Iterable[Any], int]:
        """The batches of the phase now starting over ``dl``, and the index of the first.

        The first phase after :meth:`prepare` is the one the checkpoint was written in:
        the state is restored and the iteration goes on after the checkpoint's batch.
        Later phases iterate ``dl`` from its start.
        """
        if self._applied:
            return dl, 0
        first = self.train["loop"]["iter"] + 1
        if _stateful(dl):
            batches: Iterable[Any] = dl  # the loader resumes itself, from its restored state
        else:
            start = self.train["data"]["phase_start"]
            set_rng_state(start["rng"])
            _set_generators(dl, start["generators"])
            batches = _skip(dl, first)
        start_state = self.train["data"]["phase_start"]
        self._restore(learn)
        learn.state.extras[PHASE_START] = PhaseStart(start_state["rng"], start_state["generators"])
        return batches, first

    def _restore(self, learn: Learner) -> None:
        """Load everything but the data position into ``learn`` (checked by prepare)."""
        self._applied = True
        train, state = self.train, learn.state
        load_weights(learn, self.ckpt, with_opt=True, strict=True)
        grads: dict[str, torch.Tensor] = train["grads"]
        for name, param in unwrap_model(learn.model).named_parameters():
            grad = grads.get(name)
            param.grad = None if grad is None else grad.to(param.device, param.dtype)
        keyed = _keyed(learn)
        sitting_out = learn.rank != 0  # rank-zero-only callbacks hear nothing here
        for key, cb_state in train["callbacks"].items():
            if key in keyed and not (sitting_out and keyed[key].rank_zero_only):
                try:
                    keyed[key].load_state_dict(cb_state)
                except Exception as error:
                    error.add_note(f"trainbus: restoring callback {key} from {self.path}")
                    raise
        loop = train["loop"]
        counters: tuple[FieldName, ...] = ("iter", "train_iter", "pct_train", "training")
        for name in counters:
            state.set_trusted(name, loop[name])
        dls = learn.dls
        for name, loader in (("train", dls.train), ("valid", dls.valid)):
            _set_generators(loader, train["data"]["generators"][name])
            loader_state = train["data"]["loader"].get(name)
            if loader_state is not None:
                _call(loader, "load_state_dict", loader_state)
        set_rng_state(train["rng"])
