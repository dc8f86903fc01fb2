"""dsgl_cli.engine"""
