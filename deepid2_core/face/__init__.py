"""The face pipeline: detect (Haar or YuNet), the face-box rule of the landmark nets
(box.py), the 5 landmarks (landmarks.py: level 1 and the cascade), align (similarity on
eyes and mouth), cut multi-patch layouts (DeepID's 60, DeepID2's 200), and `deepid2
align` over a folder (pipeline.py)."""
from .align import (CANONICAL, DEFAULT_SIZE, MEAN_SHAPE, align_face, alignment_matrix,
                    alignment_points, mirror_landmarks, similarity_transform, to_pixels,
                    transform_points)
from .detect import (FaceDetection, HaarDetector, YuNetDetector, detect_faces, detect_image,
                     make_detector, read_image, to_bgr8)
from .patches import (DEEPID, DEEPID2, PatchLayout, Region, cut_all, cut_flipped, cut_patch,
                      deepid2_layout, deepid_layout, flip_partner, get_layout, patch_name,
                      region_box, resolve_patch)

__all__ = [
    "CANONICAL", "DEFAULT_SIZE", "MEAN_SHAPE", "align_face", "alignment_matrix",
    "alignment_points", "mirror_landmarks", "similarity_transform", "to_pixels",
    "transform_points", "FaceDetection", "HaarDetector", "YuNetDetector", "detect_faces",
    "detect_image", "make_detector", "read_image", "to_bgr8", "DEEPID", "DEEPID2",
    "PatchLayout", "Region", "cut_all", "cut_flipped", "cut_patch", "deepid2_layout",
    "deepid_layout", "flip_partner", "get_layout", "patch_name", "region_box", "resolve_patch",
]
