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


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs for any block of one run (small, picklable).

    ``input_array``: path of the level-0 zarr array; ``axes``: its axes (subset of tczyx);
    ``input_stats``: per input channel, the volume-global normalisation statistics;
    ``output_stats``: per output channel, the statistics that map model space back.
    """

    input_array: str
    axes: str
    output_root: str
    out_axes_shape: tuple[int, ...]
    model_path: str
    model_sha256: str
    settings: RunSettings
    input_stats: tuple[Stats, ...]
    output_stats: tuple[Stats, ...]
    objective: str
    sampled: bool
    schedule: dict[str, Any]
    multiple: int
    device: str = "auto"
    torch_threads: int = 0

    @property
    def grid(self) -> TileGrid:
        s = self.settings
        height, width = (self.out_axes_shape[self.axes.index(a)] for a in "yx")
        return TileGrid(height, width, s.tile, s.overlap, self.multiple)

    def outputs(self) -> list[PlannedOutput]:
        return planned_outputs(self.sampled, self.settings.samples, self.settings.save_samples)

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
