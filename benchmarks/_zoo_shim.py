# zoo models as module:Class for probe.py
import functools
from cnn_jax.models import SeedCNN, VGGBN
from cnn_jax.models import resnet
ResNet20 = resnet.ResNet20
