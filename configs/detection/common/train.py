"""Training-loop settings read by tools/train_net.py."""

train = dict(
    output_dir="./output/detection",
    init_checkpoint="",  # a detector checkpoint, or a backbone-only EVA MIM / timm file
    source_classes=None,  # class names of init_checkpoint when the file does not carry them
    checkpoint_load=dict(patch_resize="bicubic", rel_pos_resize="linear", pos_resize="eva"),
    # --eval-only: evaluate the file's EMA weights (its top-level "ema_state", as the authors' EVA-02 files carry)
    # instead of its "model" weights; the authors' spelling. Training with EMA is not part of this toolkit.
    model_ema=dict(use_ema_weights_for_eval_only=False),
    max_iter=90000,
    stop_iter=None,  # end this run early (a resolution stage); the lr schedule still spans max_iter
    amp=dict(enabled=True),  # used on GPU only
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=3),
    eval_period=0,  # 0: evaluate at the end only; -1: never
    log_period=20,
    device="cuda",
    seed=-1,
)
