"""The whole method from one config: stages chained and resumable (:mod:`run`, :mod:`stages`),
the config (:mod:`config`), the demo (:mod:`demo`)."""
