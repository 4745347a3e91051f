"""Face verification on DeepID2 features (issue 6): PCA + Joint Bayesian,
L2 / cosine baselines, metrics (ROC, EER, k-fold accuracy, identification),
LFW pair lists and multi-patch feature extraction. numpy only at its core."""
from .baselines import CosineScorer, L2Scorer
from .identification import (GalleryProbeSplit, open_set_dir, rank1_accuracy,
                             split_gallery_probe)
from .joint_bayesian import JointBayesian
from .metrics import (Roc, accuracy, auc, best_threshold, eer, kfold_accuracy, roc_curve,
                      tar_at_far)
from .model import Verifier, sample_pairs
from .pca import PCA

__all__ = ["CosineScorer", "L2Scorer", "GalleryProbeSplit", "open_set_dir", "rank1_accuracy",
           "split_gallery_probe", "JointBayesian", "Roc", "accuracy", "auc", "best_threshold",
           "eer", "kfold_accuracy", "roc_curve", "tar_at_far", "Verifier", "sample_pairs", "PCA"]
