// The test hooks of the face pipeline's stages (_cpu.yunet_*, landmarks_*,
// align_face, cut_*), one translation unit: each pybind11 file costs seconds
// of compile time, and these three are small.
#include "stages/geometry.cpp"
#include "stages/landmarks.cpp"
#include "stages/yunet.cpp"
