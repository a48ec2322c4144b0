"""Face detectors behind one small interface: one face per frame, as a box, five alignment points and landmarks.

Two backends:
- `mediapipe` (default): MediaPipe 0.10.21's full-range face detector and 478-point face mesh, whose .tflite
  models ship inside the wheel, so it works with no network.
- `sfd`: face-alignment's S3FD boxes + FAN 68-point landmarks, the detector the Wav2Lip papers used. Its weights
  are never downloaded by us; they must already be in torch's hub checkpoint folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import cv2
import numpy as np

from core.errors import UserError


class DetectorUnavailable(UserError):
    """The chosen detector cannot run on this machine; the message says what is missing and where it goes."""


@dataclass(frozen=True)
class Face:
    """One detected face in pixel coordinates of the frame it came from.

    box: (x1, y1, x2, y2), an S3FD-style box (brows to just above the chin), before Wav2Lip's pads.
    points5: left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right), for alignment.
    landmarks: every landmark the backend has (478 for mediapipe, 68 for sfd).
    """
    box: np.ndarray
    points5: np.ndarray
    landmarks: np.ndarray


class FaceDetector(Protocol):
    name: str
    num_landmarks: int

    def detect(self, frame_bgr: np.ndarray) -> Optional[Face]: ...

    def close(self) -> None: ...


# MediaPipe face-mesh indices (image-left = the subject's right).
MESH_FOREHEAD, MESH_CHIN = 10, 152
MESH_EYE_LEFT, MESH_EYE_RIGHT = (33, 133), (362, 263)
MESH_NOSE_TIP, MESH_MOUTH_LEFT, MESH_MOUTH_RIGHT = 1, 61, 291
MESH_FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
                  176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
# S3FD boxes stop above the chin: measured on skimage's astronaut, S3FD/Haar height = 0.84 x forehead-to-chin.
BOX_HEIGHT_OF_FACE = 0.84


def mesh_face(landmarks: np.ndarray) -> Face:
    """Box and alignment points from a 478-point mesh, shaped like the S3FD boxes Wav2Lip was trained on."""
    oval = landmarks[list(MESH_FACE_OVAL)]
    x1, x2 = oval[:, 0].min(), oval[:, 0].max()
    top, chin = landmarks[MESH_FOREHEAD], landmarks[MESH_CHIN]
    y1 = min(top[1], oval[:, 1].min())
    y2 = y1 + BOX_HEIGHT_OF_FACE * float(np.linalg.norm(chin - top))
    points5 = np.stack([landmarks[list(MESH_EYE_LEFT)].mean(0), landmarks[list(MESH_EYE_RIGHT)].mean(0),
                        landmarks[MESH_NOSE_TIP], landmarks[MESH_MOUTH_LEFT], landmarks[MESH_MOUTH_RIGHT]])
    return Face(np.array([x1, y1, x2, y2], np.float32), points5.astype(np.float32), landmarks.astype(np.float32))


class MediaPipeDetector:
    """Face mesh on a square region around the face, found by MediaPipe's full-range detector when needed.

    The mesh's own detector sees the whole frame at 128x128, where a face of 130 px in a 720p frame is about 13 px
    and is missed for seconds at a time. So the full-range detector (made for small, distant faces) finds the face
    on the whole frame, the mesh runs on a ROI_SIZE crop around it, and later frames reuse the previous
    landmarks' region; the full-frame search runs again only after the face is lost.
    """
    name = "mediapipe"
    num_landmarks = 478
    ROI_SIZE = 256
    ROI_SCALE = 2.0  # ROI side / face-box side: room for the motion between two frames

    def __init__(self, min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging is noisy on stderr
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise DetectorUnavailable(f"mediapipe is not importable ({exc}); run scripts/setup.sh") from exc
        self._finder = face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
        # Tracking mode: the ROI is re-centred on the face every frame, so in ROI pixels the face barely moves and
        # the mesh can follow it from its last landmarks without running its own detector each time.
        self._mesh = face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                        min_detection_confidence=min_confidence,
                                        min_tracking_confidence=min_confidence)
        self._roi: Optional[tuple[float, float, float]] = None  # centre x, centre y, side in frame pixels

    def detect(self, frame_bgr: np.ndarray) -> Optional[Face]:
        landmarks = self._mesh_in_roi(frame_bgr) if self._roi else None
        if landmarks is None:
            self._roi = self._find(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
            landmarks = self._mesh_in_roi(frame_bgr) if self._roi else None
        if landmarks is None:
            self._roi = None
            return None
        face = mesh_face(landmarks)
        x1, y1, x2, y2 = face.box
        self._roi = ((x1 + x2) / 2, (y1 + y2) / 2, self.ROI_SCALE * max(x2 - x1, y2 - y1))
        return face

    def _find(self, rgb: np.ndarray) -> Optional[tuple[float, float, float]]:
        result = self._finder.process(rgb)
        if not result.detections:
            return None
        h, w = rgb.shape[:2]
        best = max(result.detections, key=lambda d: d.score[0])
        b = best.location_data.relative_bounding_box
        return ((b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h, 1.2 * self.ROI_SCALE * max(b.width * w, b.height * h))

    def _mesh_in_roi(self, frame_bgr: np.ndarray) -> Optional[np.ndarray]:
        cx, cy, side = self._roi
        scale = self.ROI_SIZE / side
        return mesh_in(self._mesh, frame_bgr, scale, (self.ROI_SIZE / 2 - scale * cx, self.ROI_SIZE / 2 - scale * cy),
                       self.ROI_SIZE, cv2.BORDER_CONSTANT)

    def close(self) -> None:
        self._mesh.close()
        self._finder.close()


def mesh_in(mesh, image_bgr: np.ndarray, scale: float, shift: tuple[float, float], size: int,
            border: int) -> Optional[np.ndarray]:
    """The face mesh's 478 landmarks, in `image_bgr` pixels, read on the size x size view of it scaled by `scale`
    and moved by `shift`; None when the mesh finds no face there."""
    to_view = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]])
    view = cv2.warpAffine(image_bgr, to_view, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    result = mesh.process(cv2.cvtColor(view, cv2.COLOR_BGR2RGB))
    if not result.multi_face_landmarks:
        return None
    points = np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark], np.float32) * size
    return ((points - to_view[:, 2]) / scale).astype(np.float32)


class CropMesh:
    """The face mesh on a stream of face crops (a lip model's output), in crop pixels: what a viewer sees of the
    mouth, for the blendshape weights.

    A crop is cut close around the face, where the mesh's own detector can miss it, so it is read with a margin
    (its edges repeated) at the mesh's working size; in tracking mode the mesh then follows the face from crop to
    crop. Mediapipe loads on the first crop."""
    SIZE = 256
    MARGIN = 0.3  # of the crop's side, on every edge

    def __init__(self, min_confidence: float = 0.5):
        self.min_confidence = min_confidence
        self._mesh = None

    def __call__(self, crop_bgr: np.ndarray) -> Optional[np.ndarray]:
        if self._mesh is None:
            os.environ.setdefault("GLOG_minloglevel", "2")
            from mediapipe.python.solutions import face_mesh
            self._mesh = face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                            min_detection_confidence=self.min_confidence,
                                            min_tracking_confidence=self.min_confidence)
        side = crop_bgr.shape[0]
        scale = self.SIZE / (side * (1 + 2 * self.MARGIN))
        offset = scale * side * self.MARGIN
        return mesh_in(self._mesh, crop_bgr, scale, (offset, offset), self.SIZE, cv2.BORDER_REPLICATE)

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None


SFD_FILES = {"s3fd": "s3fd-619a316812.pth", "fan": "2DFAN4-11f355bf06.pth.tar"}


def sfd_weight_dir() -> Path:
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints"


class SfdDetector:
    """face-alignment's S3FD + 2D-FAN-4, only from weights already on disk (face-alignment would download them)."""
    name = "sfd"
    num_landmarks = 68

    def __init__(self, device: str = "cpu"):
        folder = sfd_weight_dir()
        missing = [f for f in SFD_FILES.values() if not (folder / f).is_file()]
        if missing:
            raise DetectorUnavailable(
                f"detector 'sfd' needs {' and '.join(missing)} in {folder} (face-alignment's S3FD and 2D-FAN-4 "
                f"weights, published by the face-alignment project; copy them there or set TORCH_HOME), "
                f"and nothing is downloaded here. Use --detector mediapipe, which needs no download.")
        import face_alignment
        self._fa = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D, device=device, flip_input=False, compile=False,
            face_detector="sfd", face_detector_kwargs={"path_to_detector": str(folder / SFD_FILES["s3fd"])})

    def detect(self, frame_bgr: np.ndarray) -> Optional[Face]:
        found = self._fa.get_landmarks_from_image(frame_bgr[..., ::-1].copy(), return_bboxes=True)
        landmarks, _, boxes = found
        if not landmarks:
            return None
        best = int(np.argmax([b[4] for b in boxes]))
        lm = np.asarray(landmarks[best], np.float32)[:, :2]
        points5 = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
        return Face(np.asarray(boxes[best][:4], np.float32), points5.astype(np.float32), lm)

    def close(self) -> None:
        pass


DETECTORS = {"mediapipe": MediaPipeDetector, "sfd": SfdDetector}


def make_detector(name: str) -> FaceDetector:
    if name not in DETECTORS:
        raise DetectorUnavailable(f"unknown detector '{name}'; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name]()
