"""YOLO-format data: data yaml, label verification, augmentation, loader, built-in synthetic dataset."""
from .config import DataConfigError, load_data_config
from .dataset import YoloDataset
from .loader import create_dataloader

__all__ = ["DataConfigError", "YoloDataset", "create_dataloader", "load_data_config"]
