"""INT8 ONNX for CPUs: static quantization of an exported detector with onnxruntime, calibrated on training images.

Weights are quantized per channel (int8) and activations per tensor (uint8), with scales from the activation ranges
seen on letterboxed training images (QDQ format, which onnxruntime runs on any CPU). The detection head's decoding
stays in fp32: its last tensor holds box coordinates in pixels (up to the image size) next to class probabilities
(0 to 1), and one uint8 scale for both would round every probability away. Only the head's convolutions are
quantized; the distribution integral (DFL), the decoding, the sigmoid and the concatenation are not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class LetterboxedImages:
    """onnxruntime calibration reader: each image as the exporter's (1, 3, imgsz, imgsz) input."""

    def __init__(self, input_name: str, images: list[Path], imgsz: int) -> None:
        from distill.deploy.export import letterboxed

        self._batches = iter([{input_name: letterboxed(image, imgsz).numpy()} for image in images])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def head_decoding_nodes(model_path: str | Path) -> list[str]:
    """Names of the nodes of the last layer (the Detect head) that are not its convolutions' own (everything from the
    DFL on): kept in fp32."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    layers = [n.name.split("/")[1] for n in graph.node if n.name.startswith("/model.")]
    head = max(layers, key=lambda name: int(name.split(".")[1]))
    return [n.name for n in graph.node if n.name.startswith(f"/{head}/")
            and not (n.op_type == "Conv" and ("/cv2." in n.name or "/cv3." in n.name))]


def quantize_int8(onnx_path: str | Path, calibration: list[Path], imgsz: int, out: str | Path | None = None) -> Path:
    """Write `<name>-int8.onnx` (or `out`) beside the fp32 ONNX file, calibrated on `calibration` images."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    onnx_path = Path(onnx_path)
    out = Path(out) if out else onnx_path.with_name(f"{onnx_path.stem}-int8.onnx")
    if not calibration:
        raise ValueError("INT8 calibration needs at least one training image.")
    name = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    quantize_static(str(onnx_path), str(out), LetterboxedImages(name, calibration, imgsz), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=head_decoding_nodes(onnx_path))
    return out
