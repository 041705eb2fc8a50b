# COCO-Stuff-164k (171 classes; labels converted to train ids, *_labelTrainIds.png), 896 crops, ADE20K's
# pipelines (the dataset turns reduce_zero_label off).
_base_ = ["./ade20k.py"]
dataset_type = "CheckedCOCOStuffDataset"
data_root = "data/coco_stuff164k"
train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/train2017", seg_map_path="annotations/train2017"),
    )
)
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/val2017", seg_map_path="annotations/val2017"),
    )
)
test_dataloader = val_dataloader
