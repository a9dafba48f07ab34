"""One iteration in three stages: prepare -> evaluate -> conclude (see ``engine.py``).

``common.py`` holds what the stages share (their records, the exceptions that end an
iteration, the step runner), so that no stage imports another or the engine.
"""
