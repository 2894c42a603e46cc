"""The encoder node: ``encoder_node.py`` is the rclpy adapter (the only module that imports ROS); ``core.py`` is the
node minus ROS; ``config.py``, ``stats.py`` and ``mailbox.py`` are its parameters, diagnostics and frame policy."""
