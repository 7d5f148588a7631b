"""Cross-episode identity over the lake: who each tracklet is, and how sure the name is.

Modules, along the run's seams (import them by full path; this file imports nothing, so the
package adds no edge to the import graph):

* ``inputs``      – tracklets and pooled vectors read from the lake, the current run;
* ``gallery``     – reference images found, face-cropped and embedded as tracklet crops are;
* ``metric``      – the comparison a series' model calls for (cosine in a fitted space, or CCIP's
  own difference model) behind one interface;
* ``calibration`` – the naming space and the gallery-calibrated threshold;
* ``clustering``  – HDBSCAN with temporal pruning, cross-shot merge, the one constrained union;
* ``naming``      – open-set naming of clusters from their members' verdicts;
* ``corrections`` – a user's corrections as ``labels`` rows, and how they apply;
* ``evaluation``  – cluster quality and scores against ground truth;
* ``run``         – one identity run and its persistence (``identify``).
"""
