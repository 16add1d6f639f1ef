"""The pixel values the model, its training and its inference agree on; each is defined here only.

The model takes raw RGB pixel values in [0, 255] and normalises them itself: x * NORMALISE_SCALE +
NORMALISE_OFFSET = x / 127.5 - 1, in [-1, 1] (MobileNetV2's ImageNet range). Padding with MEAN_PIXEL is then
padding with 0.
"""

MEAN_PIXEL = 127.5  # The float mean pixel: what padding of float images (crops, evaluation canvases) holds.
MEAN_PIXEL_UINT8 = 128  # MEAN_PIXEL in uint8 (rounded half up): padding of uint8 canvases (training, TFLite).
NORMALISE_SCALE = 1 / MEAN_PIXEL
NORMALISE_OFFSET = -1.0

# research/deeplab's canvas: its models were trained and evaluated on 513 x 513 images (16 x 32 + 1, made for
# corner-aligned resizes), padded bottom/right with the mean pixel. Google's published models take it, and so do
# our TFLite exports.
DEEPLAB_CANVAS = 513
