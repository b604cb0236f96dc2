"""NC2S: zero-trust command and control for unmanned vehicles (arXiv 2511.21936). See docs/c2.md.

The public surface, by module (nothing is imported here, so ``edgecloud --help`` does not pay
for cryptography and pymavlink):

* :mod:`edgecloud.c2.pki` — ``init``, ``issue_to_directory``, ``renew``, ``revoke``, ``Issuer``,
  ``identity_of``, ``check_chain``
* :mod:`edgecloud.c2.session` — ``SecureSession`` (sans-I/O), ``Credentials``
* :mod:`edgecloud.c2.control` — ``UxvControl``, ``GcsControl``, ``HandoverRequest`` (sans-I/O)
* :mod:`edgecloud.c2.gateway` — ``UxvGateway``, ``GcsGateway``
* :mod:`edgecloud.c2.commander` — ``approve_handover``, ``push_crl``, ``TcService``, ``request_renewal``
* :mod:`edgecloud.c2.bench` — ``run_bench``
"""
