"""YAML-defined YOLOv5-style detector (see docs/core-api.md, "Model")."""
from .anchors import anchor_metrics, check_anchors, fit_anchor_count, kmean_anchors, label_wh, model_anchor_pixels, set_anchors
from .common import C3, SPPF, Bottleneck, Concat, Conv, autopad
from .head import Detect
from .head_af import DetectAF
from .info import layer_table, model_info
from .yolo import HEADS, MODULES, Model, is_anchor_free, load_arch, make_divisible, parse_model

__all__ = ['Model', 'Conv', 'Bottleneck', 'C3', 'SPPF', 'Concat', 'Detect', 'DetectAF', 'HEADS', 'is_anchor_free', 'autopad',
           'MODULES',
           'load_arch', 'make_divisible', 'parse_model', 'model_info', 'layer_table',
           'kmean_anchors', 'anchor_metrics', 'check_anchors', 'fit_anchor_count', 'label_wh', 'model_anchor_pixels', 'set_anchors']
