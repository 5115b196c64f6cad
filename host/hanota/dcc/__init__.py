"""The DCC: the DUIS endpoint Users submit signed service requests to, its registration data
and Central Products List, and the WAN to the Comms Hubs (one per premises).

Modules (one concern each):

- `pki`: an SMKI-like test PKI (root, Organisation certificates with role and entity ID) and
  the key store the DCC checks signatures against;
- `xmlsig`: XMLDSig sign and verify of DUIS documents (signxml);
- `duis`: DUIS requests, acknowledgements, responses and alerts as XML, and their header rules;
- `store`: the DCC's SQLite database (registration data, CPL, User counters, requests,
  responses and the WAN outbox);
- `service`: what the DCC does with a verified request (checks, then a WAN message to the CH,
  or an answer of its own);
- `http`: `hanota dcc serve`, the DUIS endpoint over HTTP (aiohttp);
- `wan`: the DCC <-> Comms Hub message protocol and both of its ends.
"""
