"""rk_siglip_ros: SigLIP vision embeddings on the RK3588 NPU, for ROS 2.

Layers, one direction: ``builder`` (offline; torch, transformers, rknn-toolkit2) writes a shard set described by
``manifest``; the runtime (``encoder``, ``scheduler``, ``backends``, ``preprocess``) reads it with numpy and
ONNX Runtime / RKNN-Lite only; ``node`` is the only module that imports rclpy.
"""

__version__ = "0.1.0"
