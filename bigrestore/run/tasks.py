"""The work of a run as plain data: the job every block shares and one task per block.

No torch and no zarr here, so the command line can validate and plan without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bigrestore.diffusion.schedule import Schedule
from bigrestore.intensity import Stats
from bigrestore.outputs import PlannedOutput, planned_outputs
from bigrestore.run.settings import RunSettings
from bigrestore.run.tiling import Block, TileGrid


def plane_entry(values: tuple[Any, ...], plane: int) -> Any:
    """Entry ``plane`` of per-plane ``values``, or their only entry when every plane shares it."""
    return values[0] if len(values) == 1 else values[plane]


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs for any block of one run (small, picklable).

    ``input_array``: path of the level-0 zarr array; ``axes``: its axes (subset of tczyx);
    ``input_stats``: per plane, per input channel, the normalisation statistics;
    ``output_stats``: per plane, per output channel, the statistics that map model space back.
    Per-plane values (these two and ``background``) hold one entry per plane, indexed
    t · ``planes_z`` + z, or a single entry that every plane shares (``plane_values``).
    """

    input_array: str
    axes: str
    output_root: str
    out_axes_shape: tuple[int, ...]
    model_path: str
    model_sha256: str
    settings: RunSettings
    input_stats: tuple[tuple[Stats, ...], ...]
    output_stats: tuple[tuple[Stats, ...], ...]
    objective: str
    sampled: bool
    schedule: dict[str, Any]
    multiple: int
    device: str = "auto"
    torch_threads: int = 0
    #: The model's calibration for these sampler settings (bigrestore.diffusion.calibration),
    #: None when it has none: the calibrated outputs are then not written.
    calibration: dict[str, Any] | None = None
    #: Per plane, per input channel, the background threshold in model space
    #: (bigrestore.run.background; None for a channel without one); None when the run does not
    #: skip background tiles.
    background: tuple[tuple[float | None, ...], ...] | None = None
    #: z planes per t: the plane of (t, z) is t · planes_z + z.
    planes_z: int = 1

    def plane_values(self, values: tuple[Any, ...], task: BlockTask) -> Any:
        """The entry of per-plane ``values`` for ``task``'s plane (the only one when shared)."""
        return plane_entry(values, task.t * self.planes_z + task.z)

    @property
    def grid(self) -> TileGrid:
        s = self.settings
        height, width = (self.out_axes_shape[self.axes.index(a)] for a in "yx")
        return TileGrid(height, width, s.tile, s.overlap, self.multiple)

    def outputs(self) -> list[PlannedOutput]:
        return planned_outputs(
            self.sampled,
            self.settings.samples,
            self.settings.save_samples,
            self.calibration is not None,
            self.background is not None,
        )

    def evaluations_per_tile(self) -> int:
        """Network evaluations (tiles through the network once) per tile of this run."""
        if not self.sampled:
            return 1
        return self.settings.samples * self.settings.sampling.evaluations_per_sample(
            Schedule.from_dict(self.schedule)
        )


@dataclass(frozen=True)
class BlockTask:
    """One block of one plane: ``t``/``z`` indices (0 if the axis is absent), the input channels
    fed to the model together, their positions in the output channel axis, and the YX block."""

    t: int
    z: int
    channels: tuple[int, ...]
    out_channels: tuple[int, ...]
    block: Block
    done_index: tuple[int, ...]

    @property
    def name(self) -> str:
        return "block-" + "-".join(str(i) for i in self.done_index)


def block_side(settings: RunSettings) -> int:
    """Side of a (full) block in pixels: chunk x chunks per block."""
    return settings.chunk * settings.chunks_per_block


def tile_owners(job: RunJob, task: BlockTask) -> list[tuple[int, ...]]:
    """Done-indices of the blocks whose tiles ``task``'s block needs (its own among them): a
    tile belongs to the block it starts in (``TileGrid.tiles_owned``)."""
    side = block_side(job.settings)
    t, g, z = task.done_index[:3]
    owners = {(ty // side, tx // side) for ty, tx in job.grid.tiles_touching(*task.block.region)}
    return [(t, g, z, by, bx) for by, bx in sorted(owners)]


@dataclass
class SharedTiles:
    """Which tile groups (one per owner block) each remaining block needs, and how many of
    the remaining blocks still need each group: a group's result can be dropped when its count
    reaches 0. Plain bookkeeping, no Dask (bigrestore.run.cluster.run_blocks uses it)."""

    needs: dict[tuple[int, ...], list[tuple[int, ...]]]
    uses: dict[tuple[int, ...], int]
    owners: dict[tuple[int, ...], BlockTask]

    @classmethod
    def plan(cls, job: RunJob, all_tasks: list[BlockTask], left: list[BlockTask]) -> SharedTiles:
        owners = {task.done_index: task for task in all_tasks}
        needs = {task.done_index: tile_owners(job, task) for task in left}
        uses: dict[tuple[int, ...], int] = {}
        for groups in needs.values():
            for group in groups:
                uses[group] = uses.get(group, 0) + 1
        return cls(needs, uses, owners)

    def finished(self, task: BlockTask) -> list[tuple[int, ...]]:
        """Record a finished block; returns the groups no remaining block needs any more."""
        released = []
        for group in self.needs.pop(task.done_index, []):
            self.uses[group] -= 1
            if self.uses[group] == 0:
                released.append(group)
        return released

    def tiles_in(self, job: RunJob, group: tuple[int, ...]) -> int:
        return len(job.grid.tiles_owned(*self.owners[group].block.region))
