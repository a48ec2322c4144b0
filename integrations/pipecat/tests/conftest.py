import sys

from loguru import logger

logger.remove()  # Pipecat logs every frame processor's start at DEBUG: keep the test output to what failed
logger.add(sys.stderr, level="WARNING")
