"""Dataset readers (VOC 2012 + SBD, COCO 2014) and the demo dataset generator."""
