# UperNet on EVA-02's plain ViT with its four-scale pyramid (EVA-02/seg/configs/_base_/models/upernet_beit.py and
# configs/eva02/upernet/upernet_eva02_base_12_512_slide_60k.py): UPerHead on the four maps (pool scales 1, 2, 3, 6,
# dropout 0.1, CE 1.0), an auxiliary FCN head on the third map (256 channels, one conv, CE 0.4), sliding-window
# test. The authors' SyncBN is BN here: the runner's sync_bn converts it when training is distributed.
num_classes = 150
embed_dim = 768
norm_cfg = dict(type="BN", requires_grad=True)
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512),  # the training crop (the authors' Pad); configs at other crops set it
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="EVAViTFeaturePyramid",
        preset="eva02_base_seg",
        backbone_overrides=dict(drop_path_rate=0.15),
        out_indices=(3, 5, 7, 11),
        norm_cfg=norm_cfg,
        # init_cfg=dict(type="Pretrained", checkpoint=...): the EVA-02 MIM weights (the configs that start from them)
    ),
    decode_head=dict(
        type="UPerHead",
        in_channels=[embed_dim] * 4,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=embed_dim,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=embed_dim,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341)),
)
