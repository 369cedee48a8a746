"""``paywire trace``: a charge's hop timeline (docs/protocol.md §5.2.1) as text and PNG."""
