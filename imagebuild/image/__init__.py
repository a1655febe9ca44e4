"""image: the host image build.

The image file (``config``), the build's workspace (``context``), the stages in the order
the disk is made (``pipeline``, ``stages/``), the GPT layout (``layout``), the platform
artifacts made from the raw disk (``platforms/``) and the files the image carries (``data/``).
Imports ``core`` (and ``channels`` for the release format).
"""
