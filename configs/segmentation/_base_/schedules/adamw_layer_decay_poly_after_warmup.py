# Option (not the authors'): the poly curve starts at the end of the warm-up, lr(t) = base * (1 - (t - W) / (T - W))
# after W warm-up iterations, as this toolkit's schedule did before. Use it in place of adamw_layer_decay_poly.py.
_base_ = ["./adamw_layer_decay_poly.py"]
warmup_iters = 1500
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters),
]
