"""Training shared by every objective (abft.objectives): ABFT, the E2E baseline, and any registered one.

    records = train(model, prompts, TrainConfig(), pad_id=tok.pad_token_id, label_token_ids=ids, on_step=print)

One optimiser step per pseudo-batch (gradient accumulation over micro-batches of similar length), Adam
with a constant learning rate, prompts reshuffled every epoch by `seed`. Only W_Q / W_K are trained
(see models.trainable), directly or through LoRA adapters (`cfg.lora_r`, models.lora). After each step the
penalty controller sees the mean induction-head count.

Several processes (torchrun / accelerate launch, see abft.distributed): every process follows the same
schedule and takes its share of each pseudo-batch; gradients, losses and head counts are summed over
processes before the step, so the step, the records and the penalty are those of one process.

    loop.py     train(): the steps          setup.py    trainable tensors, LoRA, checkpointing
    state.py    checkpoint state            records.py  StepRecord, the step schedule
"""

from .loop import train
from .records import StepRecord, TrainingDiverged, schedule

__all__ = ["StepRecord", "TrainingDiverged", "schedule", "train"]
