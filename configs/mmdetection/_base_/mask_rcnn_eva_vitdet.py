# ViTDet-style Mask R-CNN on the EVA ViT (MMDetection 3.x): mmdet's Mask R-CNN with the plain ViT backbone, the
# simple feature pyramid (p2..p6), two convs in the RPN head, a 4-conv + 1-fc box head and LayerNorm (LN2d) in the
# box and mask heads, as ViTDet (Li et al., 2022) and mmdet's projects/ViTDet set them.
_base_ = ["mmdet::_base_/models/mask-rcnn_r50_fpn.py"]
custom_imports = dict(imports=["eva_transfer_projects.mmdetection"], allow_failed_imports=False)

head_norm_cfg = dict(type="LN2d", requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type="EVAViTBackbone",
        preset="eva_g_det",
        img_size=1024,
        use_act_checkpoint=True,
        # pre-trained weights: init_cfg=dict(type="Pretrained", checkpoint=...), read by eva_transfer.load_checkpoint
    ),
    neck=dict(_delete_=True, type="EVASimpleFPN", in_channels=1408, out_channels=256),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type="Shared4Conv1FCBBoxHead", conv_out_channels=256, norm_cfg=head_norm_cfg),
        mask_head=dict(norm_cfg=head_norm_cfg),
    ),
)
