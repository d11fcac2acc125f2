"""The train/val/test loaders every datamodule shares: seeded shuffling, persistent workers, pinned memory."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class SplitLoadersMixin:
    """``train/val/test_dataloader`` over ``self.{train,val,test}_dataset`` with ``batch_size``,
    ``num_workers`` and (optional) ``seed`` attributes; shuffling is seeded so runs repeat."""

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a loader")
        seed = getattr(self, "seed", None)
        gen = torch.Generator().manual_seed(int(seed)) if shuffle and seed is not None else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=gen,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)
