"""Console entry points (encode_images, encode_bag, bench). Each is a thin argparse layer over a library module."""
