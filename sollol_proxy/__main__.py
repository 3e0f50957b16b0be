from sollol_proxy.cli import main

main(prog_name="sollol-proxy")
