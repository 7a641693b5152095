"""Validate at the last training step, so the final weights are always measured (and may become "best").

Lightning validates every ``check_val_every_n_epoch`` epochs (or every ``val_check_interval`` batches), and
``trainer.max_steps`` usually ends training between two of those: a 600-step run with 128-step epochs was
last validated at step 512, so its best checkpoint could never be its final weights. This callback asks
Lightning for one more validation after the optimiser step that reaches ``max_steps`` (nothing changes when
that step is validated anyway: validation runs once) and after the last batch of the last epoch
(``max_epochs``). ``ModelCheckpoint`` sees that validation like any other, so the "best" checkpoint is chosen
among every validated step, the last one included (docs/design.md#training).
"""

from __future__ import annotations

from typing import Any

import lightning as L


class FinalValidation(L.Callback):
    """Run validation after the last optimiser step of a fit (``max_steps``, or the last batch of ``max_epochs``)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loop = trainer.fit_loop
        if loop.epoch_loop._should_accumulate():  # no optimiser step at this batch
            return
        last_step = trainer.max_steps is not None and trainer.max_steps > 0
        last_step = last_step and trainer.global_step >= trainer.max_steps
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs > 0
        last_epoch = last_epoch and trainer.current_epoch + 1 >= trainer.max_epochs
        last_epoch = last_epoch and loop.epoch_loop.batch_progress.is_last_batch
        if not (last_step or last_epoch):
            return
        # Lightning validates a batch after which ``should_stop`` is set, once the fit may stop early, and
        # only in an epoch that validates: training ends at this batch anyway, so neither condition can
        # change anything else.
        trainer.check_val_every_n_epoch = None
        loop.min_epochs, loop.epoch_loop.min_steps = None, None
        trainer.should_stop = True
