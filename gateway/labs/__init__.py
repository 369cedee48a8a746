"""The teaching labs: the checks behind ``paywire lab check N``, the skeletons a student
starts from and the reference solutions CI checks them against.

Each lab ``N`` is a module ``gateway.labs.labNN`` (see :mod:`gateway.labs.checks` for what it
defines); its student files live in ``skeletons/labNN/`` and its reference solution in
``solutions/labNN/``, apart, so a student copies only the skeleton
(``paywire lab start N``). The handouts are ``docs/labs/NN-*.md`` (English) and
``docs/labs/id/NN-*.md`` (Bahasa Indonesia).
"""
