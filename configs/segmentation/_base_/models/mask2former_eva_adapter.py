# Mask2Former on the EVA ViT-Adapter, EVA-g published settings (the authors' `EVA-01/seg/configs`;
# docs/segmentation.md): 200 queries, feature width 1024, deformable pixel decoder with 6 layers, 8 decoder layers,
# class CE 2.0 (no-object 0.1), mask BCE 5.0, dice 5.0, 12544 sampled points. Attention heads keep 32 channels each.
# The crop size (training pad size, test window) comes with the dataset config.
num_classes = 150
embed_dim = 1408  # EVA-g width: the adapter's four maps have this many channels
feat_width = 1024
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    test_cfg=dict(size_divisor=32),
)
model = dict(
    # mmseg's EncoderDecoder, removing the multi-scale test's short-side padding (projects/segmentation/test_time.py)
    type="EncoderDecoderShortSidePad",
    # the authors' order: class softmax x mask sigmoid at the masks' size (1/4), then that map resized to the input
    # (each window); "input_size" is mmseg's Mask2FormerHead.predict (mask logits upsampled first)
    combine_masks_at="mask_size",
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="EVAViTAdapter",
        preset="eva_g_seg",
        backbone_overrides=dict(drop_path_rate=0.5, use_act_checkpoint=True),
        adapter=dict(
            conv_inplane=64,
            n_points=4,
            deform_num_heads=16,
            deform_ratio=0.5,
            cffn_ratio=0.25,
            with_cffn=True,
            init_values=0.0,
            use_extra_extractor=True,
            extra_extractor_drop_path=None,  # None: the extractors' rate (0.5), as the authors'
            add_vit_feature=True,
        ),
        norm_cfg=dict(type="BN"),
        # init_cfg=dict(type="Pretrained", checkpoint=...): backbone weights (the configs that start from them)
    ),
    decode_head=dict(
        type="Mask2FormerHead",
        in_channels=[embed_dim] * 4,
        strides=[4, 8, 16, 32],
        feat_channels=feat_width,
        out_channels=feat_width,
        num_classes=num_classes,
        num_queries=200,
        num_transformer_feat_level=3,
        align_corners=False,
        pixel_decoder=dict(
            type="mmdet.MSDeformAttnPixelDecoder",
            num_outs=3,
            norm_cfg=dict(type="GN", num_groups=32),
            act_cfg=dict(type="ReLU"),
            encoder=dict(
                num_layers=6,
                layer_cfg=dict(
                    self_attn_cfg=dict(
                        embed_dims=feat_width,
                        num_heads=feat_width // 32,
                        num_levels=3,
                        num_points=4,
                        im2col_step=64,
                        dropout=0.0,
                        batch_first=True,
                        norm_cfg=None,
                        init_cfg=None,
                    ),
                    ffn_cfg=dict(
                        embed_dims=feat_width,
                        feedforward_channels=feat_width * 4,
                        num_fcs=2,
                        ffn_drop=0.0,
                        act_cfg=dict(type="ReLU", inplace=True),
                    ),
                ),
                init_cfg=None,
            ),
            positional_encoding=dict(num_feats=feat_width // 2, normalize=True),
            init_cfg=None,
        ),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=feat_width // 2, normalize=True),
        transformer_decoder=dict(
            return_intermediate=True,
            num_layers=8,
            layer_cfg=dict(
                self_attn_cfg=dict(
                    embed_dims=feat_width,
                    num_heads=feat_width // 32,
                    attn_drop=0.0,
                    proj_drop=0.0,
                    dropout_layer=None,
                    batch_first=True,
                ),
                cross_attn_cfg=dict(
                    embed_dims=feat_width,
                    num_heads=feat_width // 32,
                    attn_drop=0.0,
                    proj_drop=0.0,
                    dropout_layer=None,
                    batch_first=True,
                ),
                ffn_cfg=dict(
                    embed_dims=feat_width,
                    feedforward_channels=feat_width * 4,
                    num_fcs=2,
                    act_cfg=dict(type="ReLU", inplace=True),
                    ffn_drop=0.0,
                    dropout_layer=None,
                    add_identity=True,
                ),
            ),
            init_cfg=None,
        ),
        loss_cls=dict(
            type="mmdet.CrossEntropyLoss",
            use_sigmoid=False,
            loss_weight=2.0,
            reduction="mean",
            class_weight=[1.0] * num_classes + [0.1],
        ),
        loss_mask=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0),
        loss_dice=dict(
            type="mmdet.DiceLoss",
            use_sigmoid=True,
            activate=True,
            reduction="mean",
            naive_dice=True,
            eps=1.0,
            loss_weight=5.0,
        ),
        train_cfg=dict(
            num_points=12544,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
            assigner=dict(
                type="mmdet.HungarianAssigner",
                match_costs=[
                    dict(type="mmdet.ClassificationCost", weight=2.0),
                    dict(type="mmdet.CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                    dict(type="mmdet.DiceCost", weight=5.0, pred_act=True, eps=1.0),
                ],
            ),
            sampler=dict(type="mmdet.MaskPseudoSampler"),
        ),
    ),
    train_cfg=dict(),
    # sliding-window inference with stride 512; the window is the training crop (set with the dataset)
    test_cfg=dict(mode="slide", stride=(512, 512)),
)
