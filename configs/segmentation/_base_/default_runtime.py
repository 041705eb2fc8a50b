# Runtime shared by every segmentation config: registry scope, hooks, logging, SyncBN when distributed.
default_scope = "mmseg"
custom_imports = dict(imports=["eva_transfer_projects.segmentation"], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
# the adapter normalises with BN; the runner converts it to SyncBN only when training is distributed
sync_bn = "torch"
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(
        type="CheckpointHook",
        by_epoch=False,
        interval=2000,
        max_keep_ckpts=3,
        backend_args=dict(backend="atomic_local"),
    ),  # see projects/segmentation/checkpoint_io.py
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
# multi-scale + flip testing (tools/test_seg.py --tta) wraps the model in this
tta_model = dict(type="SegTTAModel")
