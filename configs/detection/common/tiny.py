"""The CPU-sized version of a recipe: the EVA tiny detection backbone, narrow heads, 128 px images.

``shrink_to_tiny(model, dataloader, optimizer, train)`` rewrites a recipe's config in place; the tiny configs
call it, so they run the same components as the full recipes with fewer channels, RoIs and iterations.
"""


def shrink_to_tiny(model, dataloader, optimizer, train):
    model.backbone.net.preset = "eva_tiny_det"
    model.backbone.net.use_act_checkpoint = False
    model.backbone.freeze_patch_embed = False  # trained from scratch: the patch embedding must learn
    model.backbone.out_channels = 32
    # objects of 15-100 px in 128 px images: anchors one octave per level from 16 px
    model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    model.proposal_generator.pre_nms_topk = (600, 300)
    model.proposal_generator.post_nms_topk = (300, 100)
    model.roi_heads.batch_size_per_image = 32
    for head in model.roi_heads.box_heads:
        head.conv_dims = [16, 16, 16, 16]
        head.fc_dims = [128]
    for predictor in model.roi_heads.box_predictors:
        predictor.input_shape.channels = 128
    model.roi_heads.mask_head.conv_dims = [16, 16, 16, 16, 16]

    dataloader.image_size = 128
    dataloader.train.mapper.augmentations.min_scale = 0.5
    dataloader.train.mapper.augmentations.max_scale = 1.5
    dataloader.train.total_batch_size = 16
    dataloader.train.num_workers = 1
    dataloader.test.num_workers = 1
    dataloader.synthetic_root = "./datasets/synthetic"

    optimizer.lr = 8e-4
    optimizer.weight_decay = 0.05
    optimizer.params.weight_decay_scope = "standard"
    train.init_checkpoint = ""
    train.device = "cpu"
    train.checkpointer.period = 100
    train.log_period = 20
